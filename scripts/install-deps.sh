#!/usr/bin/env bash
# Installs the Debian packages ljleak's demo and tests need: the real
# OpenResty-on-Debian stack (nginx, the lua module, luajit2,
# lua-resty-lrucache) plus curl and wrk to drive it; setcap, useradd,
# runuser, unshare and python3 for the safety tests (issue 9). Idempotent: apt runs
# only when something is missing.
set -euo pipefail

pkgs=(nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev lua-resty-lrucache
      curl wrk build-essential dpkg-dev gdb prometheus golang-go
      lua-resty-core libc6-dbg
      clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool linux-perf
      libcap2-bin passwd util-linux python3-minimal ${LJLEAK_EXTRA_PKGS:-})
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root (apt-get install ${missing[*]})" >&2; exit 1; }
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts nothing here, but a packaged nginx may be running on :80 on
# other boxes; ljleak's app uses its own prefix and port, so leave it alone.
# memlab (npm) for the heap snapshot test (tests/heapsnapshot.rs).
"$(dirname "$0")/install-memlab.sh"
