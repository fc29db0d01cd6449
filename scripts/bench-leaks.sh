#!/bin/sh
# Overhead of `ljleak leaks` on nginx + lua: requests/s of /hello measured by
# wrk from 127.0.0.1, untraced, under `ljleak leaks` (default settings and
# --sample-bytes), and under `perf record --call-graph dwarf` on the same
# libc probes when perf is installed. Prints one line per mode.
#
# Usage: scripts/bench-leaks.sh [SECONDS]   (run as root; builds release)
set -eu
SECS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q
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

wrk -t1 -c16 -d2s "$URL" >/dev/null    # warm up
BASE=$(rps)
echo "untraced:                      $BASE req/s"

run_traced() {
    label=$1; shift
    "$LJ" leaks -p "$WORKER" --time $((SECS + 3)) "$@" -o /dev/null 2>"$PREFIX/leaks.err" &
    LP=$!
    sleep 1.5
    R=$(rps)
    wait $LP || true
    LOST=$(awk '/lost events/ {gsub(",","",$3); print $3}' "$PREFIX/leaks.err")
    echo "$label $R req/s ($(awk -v a="$R" -v b="$BASE" 'BEGIN {printf "%.2f", a/b}') of untraced), lost events ${LOST:-?}"
}
run_traced "ljleak leaks (default):       "
run_traced "ljleak leaks --source malloc:  " --source malloc
run_traced "ljleak leaks --stack-bytes 2048:" --stack-bytes 2048

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
    echo "perf record --call-graph dwarf: $R req/s ($(awk -v a="$R" -v b="$BASE" 'BEGIN {printf "%.2f", a/b}') of untraced) ${LOST}"
else
    echo "perf record: not installed (apt-get install linux-perf)"
fi
