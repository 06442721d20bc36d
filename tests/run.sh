#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, builds the workspace and
# runs every suite — unit tests, the agent against real containers on this host, and the end-to-end
# suites against real VMs. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

bash tests/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --locked
# The guest agent by its own cargo invocation (only the guest's features, the `guest` profile):
# what every VM suite boots.
echo "== guest/build.sh"
bash guest/build.sh >/dev/null
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The broker suites again on the PostgreSQL store (a cluster per test binary, see
# attestation/tests/kbs_support/pg.rs); the first run used the directory store.
echo "== cargo test (coffer-kbs on PostgreSQL)"
COFFER_KBS_STORE=postgres cargo test -p coffer-attestation --locked --no-fail-fast \
    --test kbs_handshake --test kbs_security --test kbs_identity --test kbs_check \
    --test kbs_testing_chain --test kbs_availability 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# The README's main job, end to end: its output must be the decrypted message, from the guest.
echo "== demo.sh"
demo_log=$(mktemp)
if bash demo.sh >"$demo_log" 2>&1 &&
    grep -q "^hello from inside the confidential guest" "$demo_log"; then
    grep "^==" "$demo_log"
    echo "demo: 1 passed, 0 failed"
else
    cat "$demo_log"
    echo "demo: 0 passed, 1 failed"
    status=1
fi
rm -f "$demo_log"
set -e
# One closing line over every test binary and end-to-end suite.
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "all: $passed passed, $failed failed"
exit "$status"
