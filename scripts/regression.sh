#!/usr/bin/env bash
# Regression check with ljleak, end to end: for each "release" of the demo
# app (testdata/nginx/release-leaky.conf and release-fixed.conf, which serve
# /work with a leaky and a fixed handler), start nginx, warm up, snapshot the
# worker's heap, drive identical load, snapshot again, and gate with
# `ljleak diff --fail-if`. The gate must trip (exit 3) for the leaky release
# and pass (exit 0) for the fixed one; this script exits 0 when both happen.
#
# Usage: scripts/regression.sh [REQUESTS] (default 400)   -- needs root (ptrace)
# Env:   LJLEAK=path/to/ljleak (default: cargo build --release, target/release/ljleak)
#        KEEP=1 keeps the snapshots and reports in the work directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
requests=${1:-400}
gates=(--fail-if 'total>+5%' --fail-if 'cdata.bytes>+1MB')

if [[ -z "${LJLEAK:-}" ]]; then
    (cd "$root" && cargo build --release --quiet)
    LJLEAK=$root/target/release/ljleak
fi
for tool in nginx curl; do
    command -v "$tool" >/dev/null || { echo "regression.sh: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ljleak-regression.XXXXXX)
master=""
cleanup() {
    if [[ -n "$master" ]]; then kill -QUIT "$master" 2>/dev/null || true; fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "regression.sh: no free port" >&2; exit 1
}

# run_release NAME: prints the diff and returns the diff's exit code.
run_release() {
    local name=$1 dir=$work/$1 port
    port=$(free_port)
    mkdir -p "$dir/logs" "$dir/tmp"
    sed -e "s|@PORT@|$port|g" -e "s|@PREFIX@|$dir|g" -e "s|@TESTDATA@|$root/testdata|g" -e "s|@WORKERS@|1|g" \
        "$root/testdata/nginx/release-$name.conf" > "$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf"
    for _ in $(seq 100); do [[ -s $dir/logs/nginx.pid ]] && break; sleep 0.05; done
    master=$(cat "$dir/logs/nginx.pid")
    local url=http://127.0.0.1:$port
    for _ in $(seq 100); do curl -fs "$url/status" >/dev/null && break; sleep 0.05; done
    local worker
    worker=$(cat /proc/"$master"/task/*/children | tr ' ' '\n' | grep -m1 .)

    # Warm up (module loading, JIT, first allocations), then collect garbage
    # so the snapshots count live objects, not garbage awaiting the GC.
    curl -fs -o /dev/null "$url/work?n=4&warm=[1-100]"
    curl -fs -o /dev/null "$url/collect"
    "$LJLEAK" objs -p "$worker" -o "$dir/before.json"

    # Identical load for both releases.
    curl -fs -o /dev/null "$url/work?n=4&i=[1-$requests]"
    curl -fs -o /dev/null "$url/collect"
    "$LJLEAK" objs -p "$worker" -o "$dir/after.json"

    local rc=0
    "$LJLEAK" diff "$dir/before.json" "$dir/after.json" "${gates[@]}" --top 5 || rc=$?
    kill -QUIT "$master"; master=""
    return "$rc"
}

status=0
for release in leaky fixed; do
    echo "=== release: $release ($requests requests of /work?n=4) ==="
    rc=0
    run_release "$release" || rc=$?
    case "$release:$rc" in
        leaky:3) echo "=> leaky release: gate tripped (exit 3), as it should" ;;
        fixed:0) echo "=> fixed release: gates passed (exit 0), as they should" ;;
        *) echo "=> $release release: unexpected exit code $rc" >&2; status=1 ;;
    esac
    echo
done
exit "$status"
