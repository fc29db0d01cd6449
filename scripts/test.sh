#!/usr/bin/env bash
# Sets up a fresh Debian bookworm box and runs the whole test suite:
# installs the stack, builds the extra LuaJIT variants (cached), then lint
# and every test, live integration tests included (they need root: ptrace,
# perf_event_open, uprobes).
set -euo pipefail
cd "$(dirname "$0")/.."

# A tool that once renamed a file over /dev/null (as root) leaves a regular
# file there, and every later reader of /dev/null gets its contents (cargo's
# rustc probe then fails). Put the device back if so.
if [ ! -c /dev/null ] && [ "$(id -u)" = 0 ]; then
    echo "test.sh: /dev/null is not a device; recreating it" >&2
    rm -f /dev/null && mknod -m 666 /dev/null c 1 3
fi

scripts/install-deps.sh
scripts/build-luajit-variants.sh

export CI="${CI:-}"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
# The static, stripped binary tests/ship.rs runs from an empty chroot.
scripts/build-release.sh
cargo test --release -- --test-threads=2
# The leak tracer's tests again on the perf fallback (the default run used
# the BPF tracer).
LJLEAK_TRACER=perf cargo test --release --test leaks --test leaksnap -- --test-threads=2
