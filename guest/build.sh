#!/usr/bin/env bash
# Builds the guest agent by itself: `cargo build --profile guest -p coffer-agent`. Built alone, it
# gets exactly the guest's features (a workspace build unifies features across packages and would
# link the broker's side of coffer-attestation into the measured guest); the `guest` profile
# (Cargo.toml) is whole-program LTO, one codegen unit, stripped. Prints the binary's path on
# stdout; cargo's output goes to stderr. Arguments go to cargo (e.g. --offline).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
cargo build --profile guest -p coffer-agent --locked "$@" >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/guest/coffer-agent"
