#!/usr/bin/env bash
# Installs containerd and ctr (Debian 12's `containerd` package, 1.6, with runc) and the CNI
# plugins (Debian's `containernetworking-plugins`: bridge, host-local, loopback, portmap in
# /usr/lib/cni) for the shim and cri suites (tests/tests/shim.rs, tests/tests/cri.rs),
# idempotently. Run as root. The suites start their own containerd with a private root, state,
# socket and config, inside a network namespace of their own, where CNI builds the pods' bridge;
# this script only installs the binaries and makes sure the package's system service does not run
# (the suites never talk to it). Their images are built locally (umoci, from tests/setup.sh).
set -euo pipefail

cni_missing=0
for plugin in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$plugin" ] || cni_missing=1
done
if [ "$cni_missing" = 1 ] || ! command -v runc >/dev/null || ! command -v nsenter >/dev/null; then
    echo "setup-containerd: installing containernetworking-plugins runc util-linux"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends containernetworking-plugins runc util-linux >/dev/null
fi

if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
    echo "setup-containerd: installing containerd"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the package from starting its system service during installation.
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ "$had_policy" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends containerd >/dev/null
    if [ "$had_policy" = 0 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
fi

for tool in containerd ctr runc nsenter /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback /usr/lib/cni/portmap; do
    command -v "$tool" >/dev/null || { echo "setup-containerd: $tool is still missing" >&2; exit 1; }
done
echo "setup-containerd: ok ($(containerd --version))"
