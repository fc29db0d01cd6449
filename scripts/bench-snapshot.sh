#!/usr/bin/env bash
# Benchmark of heap capture methods on big heaps: a luajit2 process with
# 0.5, 1, 2 and 4 GB of live objects (SIZES, in MB), and for
# `--snapshot copy` and `--snapshot fork` one `ljleak objs` each (and
# `ljleak refs` with BENCH_REFS=1): the pause (the target is stopped),
# ljleak's peak RSS, the wall time, the bytes the target copied on write
# while the fork snapshot lived, and whether the two censuses agree to the
# byte (the target is quiescent: blocked at a checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-512 1024 2048 4096}
cargo build --release --quiet
lj=./target/release/ljleak
tmp=$(mktemp -d /tmp/ljleak-bench-snap.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
printf '%-7s %-5s %-5s %10s %10s %9s %10s %12s %s\n' heap cmd how pause_ms rss_mb rss/heap wall_s cow_mb same_census
for mb in $sizes; do
    rm -f "$tmp/out"
    mkfifo "$tmp/in"
    luajit testdata/lua/snapshot_big.lua "$PWD/testdata" "$mb" <"$tmp/in" >"$tmp/out" &
    pid=$!
    exec 9>"$tmp/in"
    until grep -qs '^ready' "$tmp/out"; do sleep 0.5; done
    cmds="objs"
    [ "${BENCH_REFS:-0}" = 1 ] && cmds="objs refs"
    for cmd in $cmds; do
        for how in copy fork; do
            /usr/bin/time -f '%M %e' -o "$tmp/time" \
                "$lj" "$cmd" -p "$pid" --snapshot "$how" --format json >"$tmp/$cmd.$how.json" 2>"$tmp/err" \
                || { echo "ljleak $cmd --snapshot $how failed:"; cat "$tmp/err"; continue; }
            python3 - "$tmp" "$cmd" "$how" "$mb" <<'PY'
import json, sys
tmp, cmd, how, mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(f"{tmp}/{cmd}.{how}.json"))
rss_kb, wall = open(f"{tmp}/time").read().split()[-2:]
heap = r["gc_total"]
same = ""
if how == "fork":
    try:
        c = json.load(open(f"{tmp}/{cmd}.copy.json"))
        keys = ["gc_total", "walker_total", "objects", "types", "dead", "cdata_types", "table_classes"] \
            if cmd == "objs" else ["gc_total", "objects", "object_bytes", "edges", "reachable_bytes"]
        same = "yes" if all(c.get(k) == r.get(k) for k in keys) else "NO"
    except FileNotFoundError:
        same = "?"
print(f"{heap/2**20:6.0f}M {cmd:5} {how:5} {r['pause_us']/1000:10.1f} {int(rss_kb)/1024:10.0f} "
      f"{int(rss_kb)*1024/heap:9.2f} {float(wall):10.1f} {r.get('cow_bytes',0)/2**20:12.1f} {same}")
PY
            sleep 1
        done
    done
    exec 9>&-
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    rm -f "$tmp/in"
done
