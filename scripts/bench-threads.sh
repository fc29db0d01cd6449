#!/usr/bin/env bash
# Benchmark `ljleak threads` on a luajit2 process holding N + M suspended
# coroutines (testdata/lua/threads.lua). Prints the pause, the analysis time
# after the copy (threads, then the
# object graph and dominators for retained sizes), the wall time and the peak memory of ljleak.
#
# Usage: scripts/bench-threads.sh [N] [M]   (default 100000 20000)
# Needs: root (ptrace), /usr/bin/luajit, GNU time (/usr/bin/time), a release build.
set -euo pipefail
N=${1:-100000}
M=${2:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ljleak
[ -x "$BIN" ] || cargo build --release --manifest-path "$ROOT/Cargo.toml"
OUT=$(mktemp)
# The script blocks reading stdin; a sleeping writer keeps it there.
sleep 600 | /usr/bin/luajit "$ROOT/testdata/lua/threads.lua" "$N" "$M" >"$OUT" &
PID=$(jobs -p | tail -1)
TARGET=""
for _ in $(seq 1 600); do
    grep -q '^ready' "$OUT" && TARGET=$(pgrep -f "threads.lua $N $M" | head -1) && break
    sleep 0.1
done
cleanup() { [ -n "$TARGET" ] && kill "$TARGET" 2>/dev/null; kill "$PID" 2>/dev/null; rm -f "$OUT"; }
trap cleanup EXIT
[ -n "$TARGET" ] || { echo "target did not become ready" >&2; exit 1; }
LOG=$(mktemp)
/usr/bin/time -f "wall %e s, peak rss %M KB" "$BIN" -v threads -p "$TARGET" --format json >"$LOG.json" 2>"$LOG"
echo "threads: $(grep -o '"total": [0-9]*' "$LOG.json")  (N=$N M=$M + main)"
echo "pause:   $(grep -o '"pause_us": [0-9]*' "$LOG.json") us"
grep -o 'threads analysed in .*' "$LOG" | sed 's/^/analysis: /'
grep -o 'retained sizes: .*' "$LOG" | sed 's/^/         /'
grep 'wall' "$LOG"
rm -f "$LOG" "$LOG.json"
