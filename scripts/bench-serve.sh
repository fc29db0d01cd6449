#!/bin/sh
# Cost of `ljleak serve` to the worker it watches: requests/s of nginx + lua
# /hello under wrk, unscraped, then with /metrics scraped 10 times a second
# (plus, with --census-interval 10s, the background census), then unscraped
# again (the spread of the two unscraped runs is the noise). Prints the
# ratios, ljleak's RSS at the start and the end of the scraped run, its CPU
# seconds, and the scrape latency.
#
# Usage: scripts/bench-serve.sh [SECONDS]   (default 60; run as root; builds release)
set -eu
SECS=${1:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q </dev/null
LJ=$ROOT/target/release/ljleak
PREFIX=$(mktemp -d /tmp/ljleak-bench.XXXXXX)
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(freeport)
SPORT=$(freeport)
mkdir -p "$PREFIX/logs"
sed -e "s#@PORT@#$PORT#; s#@PREFIX@#$PREFIX#g; s#@TESTDATA@#$ROOT/testdata#g; s#@WORKERS@#1#" \
    testdata/nginx/app.conf > "$PREFIX/nginx.conf"
/usr/sbin/nginx -p "$PREFIX" -c "$PREFIX/nginx.conf"
SERVE=
cleanup() {
    [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null || true
    kill "$(cat "$PREFIX/logs/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$PREFIX"
}
trap cleanup EXIT INT TERM
sleep 0.5
MASTER=$(cat "$PREFIX/logs/nginx.pid")
URL="http://127.0.0.1:$PORT/hello"

rps() { wrk -t1 -c16 -d"${SECS}s" "$URL" | awk '/Requests\/sec/ {print $2}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

WORKER=$(pgrep -P "$MASTER" | head -1)
# Worker CPU microseconds per request over a run (steadier than req/s on a
# shared machine, where the worker is not always the bottleneck).
usreq() { awk -v a="$1" -v b="$2" -v r="$3" -v s="$SECS" 'BEGIN {printf "%.1f", (b-a)*1e6/(r*s)}'; }

wrk -t1 -c16 -d2s "$URL" >/dev/null    # warm up
W0=$(cpu "$WORKER"); BASE=$(rps); W1=$(cpu "$WORKER")
BASE_US=$(usreq "$W0" "$W1" "$BASE")
echo "unscraped:                 $BASE req/s, worker $BASE_US us/request"

"$LJ" serve --listen "127.0.0.1:$SPORT" -p "$MASTER" --census-interval 10s 2>"$PREFIX/serve.log" &
SERVE=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$SPORT/metrics" >/dev/null && break; sleep 0.1; done
RSS0=$(rss_kb "$SERVE")
C0=$(cpu "$SERVE")
# 10 scrapes a second for the whole wrk run, each timed.
python3 - "$SPORT" "$SECS" >"$PREFIX/scrapes" <<'PY' &
import sys, time, urllib.request
port, secs = int(sys.argv[1]), float(sys.argv[2])
lat, errs, t_end = [], 0, time.time() + secs + 1
nxt = time.time()
while time.time() < t_end:
    t = time.time()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read()
            if b"ljleak_luajit_gc_bytes{" not in body:
                errs += 1
    except Exception:
        errs += 1
    lat.append(time.time() - t)
    nxt += 0.1
    time.sleep(max(0, nxt - time.time()))
lat.sort()
print(len(lat), errs, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3)
PY
SCRAPER=$!
W0=$(cpu "$WORKER"); SCRAPED=$(rps); W1=$(cpu "$WORKER")
SCRAPED_US=$(usreq "$W0" "$W1" "$SCRAPED")
wait "$SCRAPER"
RSS1=$(rss_kb "$SERVE")
C1=$(cpu "$SERVE")
read -r N ERRS P50 P99 <"$PREFIX/scrapes"
PAUSES=$(curl -fs "http://127.0.0.1:$SPORT/metrics" | awk '/^ljleak_pause_seconds_count/ {print $2}')
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true; SERVE=
W0=$(cpu "$WORKER"); AGAIN=$(rps); W1=$(cpu "$WORKER")
AGAIN_US=$(usreq "$W0" "$W1" "$AGAIN")
echo "unscraped again:           $AGAIN req/s, worker $AGAIN_US us/request (noise: $(awk -v a="$AGAIN" -v b="$BASE" 'BEGIN {printf "%.3f", a/b}') of the first run)"
awk -v r="$SCRAPED" -v b="$BASE" -v a="$AGAIN" -v u="$SCRAPED_US" -v ub="$BASE_US" -v ua="$AGAIN_US" 'BEGIN {printf "scraped 10/s:              %s req/s, %.3f of unscraped; worker %s us/request, %.3f of unscraped (means of both unscraped runs)\n", r, r / ((a + b) / 2), u, u / ((ua + ub) / 2)}'
echo "scrapes:                   $N in ${SECS}s, $ERRS failed, latency p50 $(printf %.2f "$P50") ms, p99 $(printf %.2f "$P99") ms"
echo "background census:         $PAUSES pauses (--census-interval 10s)"
echo "ljleak RSS:                ${RSS0} kB at start, ${RSS1} kB at end; CPU $(awk -v a="$C0" -v b="$C1" 'BEGIN {printf "%.2f", b-a}') s over the run"
