#!/bin/sh
# Overhead of `ljleak leaks` on nginx + lua: requests/s of /hello measured by
# wrk from 127.0.0.1, untraced, under `ljleak leaks` (default settings and
# --sample-bytes), and under `perf record --call-graph dwarf` on the same
# libc probes when perf is installed. Prints one line per mode.
#
# Usage: scripts/bench-leaks.sh [SECONDS]   (run as root; builds release)
# BENCH_BREAKDOWN=1 adds runs with ljleak's processing disabled (kernel cost).
set -eu
SECS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q </dev/null
LJ=$ROOT/target/release/ljleak
PREFIX=$(mktemp -d /tmp/ljleak-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$PREFIX/logs"
sed -e "s#@PORT@#$PORT#; s#@PREFIX@#$PREFIX#g; s#@TESTDATA@#$ROOT/testdata#g; s#@WORKERS@#1#" \
    testdata/nginx/leaks.conf > "$PREFIX/nginx.conf"
/usr/sbin/nginx -p "$PREFIX" -c "$PREFIX/nginx.conf"
cleanup() {
    kill "$(cat "$PREFIX/logs/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$PREFIX"
}
trap cleanup EXIT INT TERM
sleep 0.5
MASTER=$(cat "$PREFIX/logs/nginx.pid")
WORKER=$(pgrep -P "$MASTER" | head -1)
URL="http://127.0.0.1:$PORT/hello"

rps() { wrk -t1 -c16 -d"${SECS}s" "$URL" | awk '/Requests\/sec/ {print $2}'; }
# CPU seconds (user+sys) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
ratio() { awk -v a="$1" -v b="$BASE" 'BEGIN {printf "%.2f", a/b}'; }

wrk -t1 -c16 -d2s "$URL" >/dev/null    # warm up
W0=$(cpu "$WORKER")
BASE=$(rps)
W1=$(cpu "$WORKER")
echo "untraced:                        $BASE req/s, worker cpu $(awk -v a="$W0" -v b="$W1" 'BEGIN {printf "%.1f", b-a}') s"

# One traced run: req/s, its ratio to untraced, lost events, probe hits per
# request, CPU seconds of the nginx worker during the wrk run and of ljleak
# over its whole window.
run_traced() {
    label=$1; shift
    /usr/bin/time -f "%U %S" -o "$PREFIX/time" \
        "$LJ" leaks -p "$WORKER" --time $((SECS + 3)) "$@" --format json -o "$PREFIX/leaks.json" 2>"$PREFIX/leaks.err" &
    sleep 1.5
    W0=$(cpu "$WORKER")
    R=$(rps)
    W1=$(cpu "$WORKER")
    wait $! || true
    python3 - "$PREFIX" "$R" "$BASE" "$SECS" "$W0" "$W1" "$label" <<'PY'
import json, sys
d, r, base, secs, w0, w1, label = sys.argv[1:]
try:
    s = json.load(open(d + "/leaks.json"))["summary"]
except Exception as e:
    print(f"{label} failed: {open(d + '/leaks.err').read().strip()}")
    sys.exit()
u, k = open(d + "/time").read().split()[-2:]
est = s.get("sampling") or {}
print(f"{label} {float(r):.0f} req/s ({float(r)/float(base):.2f} of untraced), lost events {s['lost_events']}, "
      f"{s['samples']/max(float(r)*float(secs),1):.1f} hits/request, worker cpu {float(w1)-float(w0):.1f} s, "
      f"ljleak cpu {float(u)+float(k):.1f} s" + (f", sampled {est.get('sampled', 0)}" if est else ""))
PY
}
run_traced "ljleak leaks (default):         "
run_traced "ljleak leaks --sample-bytes 1MB:" --sample-bytes 1048576
run_traced "ljleak leaks --source malloc:   " --source malloc
if [ "${BENCH_BREAKDOWN:-}" ]; then
    # Where the cost is: probes firing with the stack copy but ljleak
    # dropping every record, and without the stack copy.
    run_traced "kernel only (records dropped):  " --debug-discard
    run_traced "kernel only, no stack copy:     " --debug-discard --stack-bytes 0
fi

if command -v perf >/dev/null 2>&1; then
    LIBC=$(awk '$6 ~ /libc\.so/ {print $6; exit}' "/proc/$WORKER/maps")
    perf probe -q -d 'probe_libc:*' 2>/dev/null || true
    perf probe -q -x "$LIBC" malloc && perf probe -q -x "$LIBC" free && perf probe -q -x "$LIBC" 'malloc%return' || true
    perf record -q -e 'probe_libc:*' --call-graph dwarf -p "$WORKER" -o "$PREFIX/perf.data" 2>"$PREFIX/perf.err" &
    PP=$!
    sleep 1.5
    R=$(rps)
    kill -INT $PP; wait $PP 2>/dev/null || true
    LOST=$(grep -o 'lost [0-9]* chunks\|Lost [0-9]* events\|[0-9]* samples lost' "$PREFIX/perf.err" | head -1)
    perf probe -q -d 'probe_libc:*' 2>/dev/null || true
    echo "perf record --call-graph dwarf:  $R req/s ($(ratio "$R") of untraced) ${LOST}"
else
    echo "perf record: not installed (apt-get install linux-perf)"
fi
