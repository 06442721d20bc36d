#!/usr/bin/env bash
# Installs what the policy differential test (policies/tests/differential.rs, POL-04) needs,
# idempotently. Run as root on Debian 12. Registries used: PyPI (pip) and Debian (apt).
#
#   - `regopy` from PyPI: the Python binding of rego-cpp, Microsoft's independent Rego
#     implementation (a manylinux_2_34 wheel with the interpreter built in; Debian 12 has glibc
#     2.36), in the venv $COFFER_VENV (default /opt/coffer/venv, shared with
#     tests/setup-measure.sh and tests/setup-deploy.sh). The test fails when it is missing.
# The version is pinned: differential.rs asserts how many constructs differential.py rewrites for
# rego-cpp 1.5, so another version is a deliberate change of both.
set -euo pipefail

VENV=${COFFER_VENV:-/opt/coffer/venv}
REGOPY_VERSION=${REGOPY_VERSION:-1.5.2}
export DEBIAN_FRONTEND=noninteractive

if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup-policies: installing python3-venv"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

installed_version() {
    "$VENV/bin/pip" show regopy 2>/dev/null | sed -n 's/^Version: //p'
}
if [ ! -x "$VENV/bin/python3" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
if [ "$(installed_version)" != "$REGOPY_VERSION" ]; then
    echo "setup-policies: installing regopy $REGOPY_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "regopy==$REGOPY_VERSION"
fi

"$VENV/bin/python3" -c 'import regopy; regopy.Interpreter()' || {
    echo "setup-policies: regopy does not load in $VENV" >&2
    exit 1
}
echo "setup-policies: ok (regopy $(installed_version), rego-cpp $("$VENV/bin/python3" -c 'import regopy; print(regopy.rego_version())'))"
