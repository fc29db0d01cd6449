#!/usr/bin/env bash
# Benchmark of the heap census: a luajit2 process holding about N live
# objects (default 1,000,000, ~100 MB with its garbage), then several
# `ljleak objs` runs. Prints the pause (the target is stopped), the walk
# speed of the copy, and the per-object pause compared with stap++'s
# lj-gc-objs (0.33-0.66 us per object, blocking the worker throughout).
# The walk is reported in CPU time too: it does not grow when other
# processes compete for the CPU, so runs on a busy machine stay comparable.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
runs=${RUNS:-5}
cargo build --release --quiet
fifo=$(mktemp -u /tmp/ljleak-bench.XXXXXX)
mkfifo "$fifo"
out=$(mktemp /tmp/ljleak-bench-out.XXXXXX)
luajit testdata/lua/census_big.lua "$PWD/testdata" "$n" <"$fifo" >"$out" &
pid=$!
exec 9>"$fifo"
trap 'kill $pid 2>/dev/null; rm -f "$fifo" "$out"' EXIT
until grep -q '^ready' "$out"; do sleep 0.2; done
echo "target: luajit pid $pid holding $n live objects"
for i in $(seq "$runs"); do
    ./target/release/ljleak objs -p "$pid" --format json >"$out.json"
    python3 - "$out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
objs, pause, walk, cpu = r["objects"], r["pause_us"], r["walk_us"], r["walk_cpu_us"]
heap_mb = r["gc_total"] / 1e6
print(f"objects={objs} gc_total={r['gc_total']} ({heap_mb:.1f} MB) exact={r['walker_total']==r['gc_total']} "
      f"copied={r['image_bytes']/1e6:.1f} MB pause={pause/1000:.2f} ms "
      f"({pause/1000/(heap_mb/100):.2f} ms per 100 MB of heap, {pause*1000/objs:.1f} ns/object) "
      f"walk={walk/1000:.1f} ms wall, {cpu/1000:.1f} ms CPU ({objs/max(cpu,1):.2f} M objects/s of CPU)")
PY
    printf '\n' >&9
    sleep 0.3
done
rm -f "$out.json"
