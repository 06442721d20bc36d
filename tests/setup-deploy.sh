#!/usr/bin/env bash
# Installs what the deploy suite (tests/tests/deploy.rs) needs, idempotently. Run as root on
# Debian 12. Registries used: PyPI (pip) and Debian (apt).
#
#   - `kubernetes-validate` from PyPI (bundles the Kubernetes OpenAPI schemas; validates offline)
#     in the venv $COFFER_VENV (default /opt/coffer/venv, shared with tests/setup-measure.sh);
#   - Debian's `openssl` (the suite makes a throwaway TLS pair for the coffer-kbs Secret) and
#     `shellcheck` (lints deploy/node/*.sh and host/shim/bench/*.sh).
# `kubectl` (renders the kustomizations, `kubectl kustomize`) is part of this machine's base image;
# the script checks it is there and says so if not. The suite also runs `containerd config dump`
# (containerd from tests/setup-containerd.sh), the built `coffer-kbs`, curl and base64.
set -euo pipefail

VENV=${COFFER_VENV:-/opt/coffer/venv}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
export DEBIAN_FRONTEND=noninteractive

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup-deploy: installing ${need_apt[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

installed_version() {
    "$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p'
}
if [ ! -x "$VENV/bin/python3" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
if [ "$(installed_version)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    echo "setup-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

for f in "$VENV/bin/kubernetes-validate" "$(command -v openssl)" "$(command -v shellcheck)"; do
    [ -x "$f" ] || { echo "setup-deploy: $f is still missing" >&2; exit 1; }
done
command -v kubectl >/dev/null || {
    echo "setup-deploy: kubectl is missing (base image tool; needed for 'kubectl kustomize')" >&2
    exit 1
}
echo "setup-deploy: ok"
echo "  kubernetes-validate: $VENV/bin/kubernetes-validate ($(installed_version))"
echo "  shellcheck:          $(shellcheck --version | sed -n 's/^version: //p')"
echo "  kubectl:             $(kubectl version --client 2>/dev/null | head -n1)"
