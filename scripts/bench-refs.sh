#!/usr/bin/env bash
# Benchmark `ljleak refs` on a luajit2 process holding about OBJECTS live GC
# objects (default 1,000,000): prints the target's pause, the analysis time
# after the pause (graph + dominators + paths; goal <= 2 s for 1M objects),
# the wall time of the whole command and its peak memory.
#
# Usage: scripts/bench-refs.sh [OBJECTS]   (run as root, from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTS=${1:-1000000}
LUAJIT=${LUAJIT:-/usr/bin/luajit}
cargo build --release --quiet
BIN=target/release/ljleak
OUT=$(mktemp -d)
trap 'kill "$LJ_PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT

# A pipe keeps the script's stdin open: it blocks at its checkpoint.
mkfifo "$OUT/in"
"$LUAJIT" testdata/lua/bench_refs.lua "$OBJECTS" <"$OUT/in" >"$OUT/script.out" &
LJ_PID=$!
exec 3>"$OUT/in"
for _ in $(seq 600); do
    grep -q '^ready' "$OUT/script.out" 2>/dev/null && break
    sleep 0.1
done
grep -q '^ready' "$OUT/script.out" || { echo "bench script did not get ready" >&2; exit 1; }

/usr/bin/time -v "$BIN" refs -p "$LJ_PID" --format json --top 10 \
    --folded "$OUT/refs.folded" -o "$OUT/refs.svg" >"$OUT/refs.json" 2>"$OUT/time.txt"

python3 - "$OUT/refs.json" "$OUT/time.txt" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
print(f"objects          {r['objects']}")
print(f"references       {r['edges']}")
print(f"gc total         {r['gc_total']} bytes")
print(f"pause            {r['pause_us'] / 1000:.1f} ms ({r['consistency']})")
print(f"analysis         {r['analysis_us'] / 1e6:.3f} s (graph + dominators + BFS; goal <= 2 s for 1M objects)")
print(f"whole command    {wall} (locate + pause + copy + analysis + reports + flame graph)")
img = r["image_bytes"]
print(f"peak RSS         {rss / 1024:.1f} MiB, of which heap copy {img / 2**20:.1f} MiB")
print(f"                 rest {(rss * 1024 - img) / max(r['objects'], 1):.0f} bytes per object (graph, dominators, paths, binary)")
s = r["suspects"][0]
print(f"top suspect      {s['desc']} retains {s['retained']} bytes via {' '.join(s['path'])}")
PY
