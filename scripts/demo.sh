#!/usr/bin/env bash
# The main job on an embedded default: installs the stack, builds ljleak,
# starts the bundled leaky nginx + Lua app from testdata/ on 127.0.0.1,
# drives requests with curl, runs ljleak against its worker, writes reports
# under reports/ and flame graphs under flamegraphs/, and stops the app.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh
cargo build --release --quiet
ljleak=$root/target/release/ljleak

port=${LJLEAK_DEMO_PORT:-18089}
prefix=$(mktemp -d /tmp/ljleak-demo.XXXXXX)
mkdir -p "$prefix/logs" "$prefix/tmp" reports flamegraphs
sed -e "s#@PORT@#$port#g; s#@PREFIX@#$prefix#g; s#@TESTDATA@#$root/testdata#g; s#@WORKERS@#1#g" \
    testdata/nginx/app.conf > "$prefix/nginx.conf"
stop() {
    if [ -f "$prefix/logs/nginx.pid" ]; then
        kill -QUIT "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null || true
        sleep 0.5
    fi
    rm -rf "$prefix"
}
trap stop EXIT
/usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf"
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/hello" >/dev/null && break; sleep 0.1; done
master=$(cat "$prefix/logs/nginx.pid")
worker=$(pgrep -P "$master" | head -n1)
echo "== demo app: nginx master $master, worker $worker on 127.0.0.1:$port"

drive() { # drive PATH COUNT
    for _ in $(seq "$2"); do curl -fs "http://127.0.0.1:$port$1" >/dev/null; done
}

echo "== before load"
"$ljleak" gc -p "$worker"
"$ljleak" objs -p "$worker" -o reports/objs-before.json

echo "== tracing allocations for 8 s while driving /leak (a cache keyed by a fresh table per request, holding cdata) and /ok"
"$ljleak" leaks -p "$worker" --time 8 -o flamegraphs/leaks.svg --folded reports/leaks.folded &
tracer=$!
sleep 1.5
drive "/leak?n=2" 300
drive "/ok?n=2" 300
wait "$tracer"

echo "== after load"
"$ljleak" gc -p "$worker"
"$ljleak" objs -p "$worker" | tee reports/objs-after.txt
"$ljleak" objs -p "$worker" -o reports/objs-after.json
echo "== what grew"
"$ljleak" diff reports/objs-before.json reports/objs-after.json --top 5 -o flamegraphs/census-diff.svg | tee reports/diff.txt
echo "== who holds it"
"$ljleak" refs -p "$worker" --top 3 -o flamegraphs/refs.svg -o reports/heap.heapsnapshot | tee reports/refs.txt
echo "   (reports/heap.heapsnapshot opens in Chrome DevTools' Memory panel)"
echo "== where the Lua threads are"
"$ljleak" threads -p "$worker" | tee reports/threads.txt
echo "== where the rest of the process's memory goes"
"$ljleak" mem -p "$master" -o reports/mem.json -o flamegraphs/mem.svg -o reports/mem.txt
cat reports/mem.txt
echo "== fleet view: Prometheus metrics and pprof endpoints for this app (Ctrl-C stops it; see ljleak serve --help for scrape configs):"
serve_port=${LJLEAK_DEMO_SERVE_PORT:-9145}
echo "   $ljleak serve --listen 127.0.0.1:$serve_port -p $master --census-interval 60s"
if "$ljleak" serve --listen "127.0.0.1:$serve_port" -p "$master" 2>/dev/null & then
    serve_pid=$!
    for _ in $(seq 30); do curl -fs "http://127.0.0.1:$serve_port/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fs "http://127.0.0.1:$serve_port/metrics" 2>/dev/null | grep '^ljleak_luajit_gc_bytes' || echo "   (port $serve_port busy: set LJLEAK_DEMO_SERVE_PORT)"
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
fi
echo "== reports in reports/, flame graphs in flamegraphs/ (leaks.svg, refs.svg, census-diff.svg, mem.svg)"
