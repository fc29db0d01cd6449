#!/usr/bin/env bash
# Installs Meta's memlab (npm) under a project-local prefix, for the test
# that loads ljleak's .heapsnapshot files with memlab's heap-analysis API
# (tests/heapsnapshot.rs, scripts/memlab-check.js). Idempotent.
set -euo pipefail
prefix=${LJLEAK_MEMLAB_DIR:-/var/cache/ljleak/memlab}
version=${LJLEAK_MEMLAB_VERSION:-2.0.5}
if [ -f "$prefix/node_modules/memlab/package.json" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install-memlab.sh: npm (Node.js 18+) is needed: run as root or install it" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$prefix"
# No browser: memlab's end-to-end runner would download Chrome; only its
# heap analysis is used here.
PUPPETEER_SKIP_DOWNLOAD=1 PUPPETEER_SKIP_CHROMIUM_DOWNLOAD=1 \
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "memlab@$version"
