#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, builds the workspace and
# runs every suite — unit tests, the agent against real containers on this host, and the end-to-end
# suites against real VMs. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash tests/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --locked
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
