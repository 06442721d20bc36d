#!/usr/bin/env bash
# Boot benchmark: median launch→agent-ready for Coffer vs launch→/init for bare QEMU on the same
# kernel, initramfs and flags, interleaved, with their ratio. Release build (the shipped agent).
# Usage: tests/bench/boot.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
bash tests/setup.sh >/dev/null
cargo build --release --locked -p coffer-agent
cargo bench --locked -p coffer-tests --bench boot -- "${1:-5}"
