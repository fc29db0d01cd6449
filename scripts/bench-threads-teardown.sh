#!/bin/sh
# Attach and detach time of `ljleak leaks` (the per-thread perf fallback) on
# an nginx worker with a thread pool of THREADS threads (default 200): every
# probe is one perf event per thread, and each event's removal waits in the
# kernel. Prints threads, events, attach seconds (start to "tracing"),
# window, detach seconds (window end to exit), lost events, exit code.
#
# Usage: scripts/bench-threads-teardown.sh [THREADS] [SOURCE]   (root; builds release)
# SOURCE: all (19 probes, default), malloc (17) or luajit (2).
set -eu
THREADS=${1:-200}
SOURCE=${2:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q </dev/null
LJ=${LJLEAK_BIN:-$ROOT/target/release/ljleak}    # LJLEAK_BIN: compare another build
PREFIX=$(mktemp -d /tmp/ljleak-bench-threads.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$PREFIX/logs"
sed -e "s#@PORT@#$PORT#; s#@PREFIX@#$PREFIX#g; s#@TESTDATA@#$ROOT/testdata#g; s#@WORKERS@#1#; s#threads=4;#threads=$THREADS;#" \
    testdata/nginx/thread_pool.conf > "$PREFIX/nginx.conf"
/usr/sbin/nginx -p "$PREFIX" -c "$PREFIX/nginx.conf"
cleanup() {
    kill "$(cat "$PREFIX/logs/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$PREFIX"
}
trap cleanup EXIT INT TERM
sleep 1
MASTER=$(cat "$PREFIX/logs/nginx.pid")
WORKER=$(pgrep -P "$MASTER" | head -1)
NT=$(ls "/proc/$WORKER/task" | wc -l)
WINDOW=2
now() { date +%s.%N; }
T0=$(now)
# Timestamp each stderr line as it arrives.
{ "$LJ" leaks -p "$WORKER" --time $WINDOW --source "$SOURCE" --max-events 100000 --max-lost 1000000000 \
    2>&1 >/dev/null; echo $? > "$PREFIX/rc"; } | while IFS= read -r l; do echo "$(now) $l"; done > "$PREFIX/err"
RC=$(cat "$PREFIX/rc")
T1=$(now)
TRACING=$(awk '/ljleak: tracing/ {print $1; exit}' "$PREFIX/err")
PROBES=$(awk '/ljleak: tracing/ {for (i=1;i<=NF;i++) if ($i=="probes" || $i=="probes\r") print $(i-1); exit}' "$PREFIX/err")
LOST=$(awk '/lost events/ {gsub(",","",$4); print $4; exit}' "$PREFIX/err")
if [ -z "$TRACING" ]; then cat "$PREFIX/err"; exit 1; fi
awk -v t0="$T0" -v t1="$T1" -v tr="$TRACING" -v w=$WINDOW -v nt="$NT" -v p="$PROBES" -v lost="$LOST" -v rc="$RC" 'BEGIN {
    printf "threads %d  probes %d  events %d  attach %.2f s  window %d s  detach %.2f s  lost %s  exit %s\n",
        nt, p, nt * p, tr - t0, w, t1 - tr - w, lost, rc }'
