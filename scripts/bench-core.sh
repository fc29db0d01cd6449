#!/usr/bin/env bash
# Benchmark of offline analysis: a luajit2 process holding about N live
# objects (default 1,000,000), then side by side in one run:
#   - `ljleak objs -p` (live census: pause, wall time);
#   - `ljleak dump -p -o CORE` (pause, wall time, core size);
#   - gdb's `gcore` of the same process (wall time: the target is stopped
#     throughout, core size);
#   - `ljleak objs --core` on both cores (wall time, same census?);
#   - `ljleak refs --core -o X.heapsnapshot` (wall time, snapshot size).
# Peak RSS of each ljleak run from /usr/bin/time when available.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
cargo build --release --quiet
dir=$(mktemp -d /tmp/ljleak-bench-core.XXXXXX)
fifo="$dir/fifo"
mkfifo "$fifo"
out="$dir/out"
luajit testdata/lua/census_big.lua "$PWD/testdata" "$n" <"$fifo" >"$out" &
pid=$!
exec 9>"$fifo"
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
until grep -q '^ready' "$out"; do sleep 0.2; done
# Wait until it blocks in read(2) at the checkpoint.
until [ "$(cut -d' ' -f1 /proc/$pid/syscall)" = 0 ]; do sleep 0.05; done
L=./target/release/ljleak
timed() { # label, command...: prints wall seconds and peak RSS
    local label=$1; shift
    local t0 t1 rss=""
    t0=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M' -o "$dir/rss" "$@" >"$dir/last" 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
        rss=" peak_rss=$(( $(cat "$dir/rss") / 1024 )) MB"
    else
        "$@" >"$dir/last" 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
    fi
    t1=$(date +%s.%N)
    printf '%-28s wall=%6.2f s%s\n' "$label" "$(echo "$t1 - $t0" | bc)" "$rss"
}
echo "target: luajit pid $pid holding $n live objects"
timed "objs -p (live)" $L objs -p "$pid" --format json
live_pause=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pause_us"])' "$dir/last")
cp "$dir/last" "$dir/live.json"
timed "dump -p -o core" $L dump -p "$pid" -o "$dir/l.core"
dump_pause=$(grep -o 'paused [0-9]* us' "$dir/err" | grep -o '[0-9]*')
timed "gcore (target stopped)" gcore -o "$dir/g" "$pid"
timed "objs --core (ljleak dump)" $L objs --core "$dir/l.core" --format json
cp "$dir/last" "$dir/c1.json"
timed "objs --core (gcore)" $L objs --core "$dir/g.$pid" --format json
cp "$dir/last" "$dir/c2.json"
timed "refs --core -o .heapsnapshot" $L refs --core "$dir/l.core" -o "$dir/h.heapsnapshot" --format json
echo "pauses: objs -p ${live_pause} us, dump ${dump_pause} us"
echo "sizes: ljleak core $(du -m "$dir/l.core" | cut -f1) MB, gcore $(du -m "$dir/g.$pid" | cut -f1) MB, heapsnapshot $(du -m "$dir/h.heapsnapshot" | cut -f1) MB"
python3 - "$dir/live.json" "$dir/c1.json" "$dir/c2.json" <<'PY'
import json, sys
live, c1, c2 = (json.load(open(p)) for p in sys.argv[1:])
keys = ["gc_total", "walker_total", "objects", "types", "dead", "cdata_types"]
for name, c in (("ljleak dump", c1), ("gcore", c2)):
    same = all(live[k] == c[k] for k in keys)
    print(f"census from {name}: {'equal to live' if same else 'DIFFERS'} (gc_total {c['gc_total']}, {c['objects']} objects)")
PY
