#!/usr/bin/env bash
# Sets up a fresh Debian bookworm box and runs the whole test suite:
# installs the stack, builds the extra LuaJIT variants (cached), then lint
# and every test, live integration tests included (they need root: ptrace,
# perf_event_open, uprobes).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build-luajit-variants.sh

export CI="${CI:-}"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release -- --test-threads=2
