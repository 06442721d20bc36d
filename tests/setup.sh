#!/usr/bin/env bash
# Installs what Coffer's build, tests and demo need on a Debian 12 machine, idempotently.
# Run as root. Only the package registries (Debian, PyPI, crates.io) are used.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need_apt+=(busybox-static)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_apt+=(linux-image-amd64)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
# The guest agent links libseccomp (seccomp profiles) and libelf (libbpf, the cgroup v2 device
# filter) statically: their archives.
[ -f /usr/lib/x86_64-linux-gnu/libseccomp.a ] || need_apt+=(libseccomp-dev)
[ -f /usr/lib/x86_64-linux-gnu/libelf.a ] || need_apt+=(libelf-dev)
[ -f /usr/lib/x86_64-linux-gnu/libz.a ] || need_apt+=(zlib1g-dev)
# image-rs tests: a real registry, real image tools (skopeo, umoci), htpasswd, openssl and gpg.
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v umoci >/dev/null || need_apt+=(umoci)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v gpg >/dev/null || need_apt+=(gnupg)
command -v socat >/dev/null || need_apt+=(socat)
# The pod network: test-made network namespaces, veths and bridges (ip), tc redirects checked (tc).
{ command -v ip >/dev/null && command -v tc >/dev/null; } || need_apt+=(iproute2)
# The mesh suite's init-container image: Debian's iptables (iptables-nft) copied into a layer.
[ -x /usr/sbin/xtables-nft-multi ] || need_apt+=(iptables)
# The key broker's shared store: attestation tests start a throwaway PostgreSQL cluster (initdb,
# pg_ctl as nobody in a temporary directory) and use psql.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null || need_apt+=(postgresql-client)

# QEMU 10 (bookworm-backports): it knows sev-snp-guest, so the confidential launch argv is run by a
# real QEMU; Debian 12's 7.2 does not. The VM suites run on it too.
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1; }
if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
    echo "setup: installing qemu-system-x86 10 from bookworm-backports"
    backports=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat > "$backports" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
[ -f /usr/share/ovmf/OVMF.fd ] || need_apt+=(ovmf)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The hybrid-vsock backend (vhost-user vsock device) QEMU talks to.
if ! command -v vhost-device-vsock >/dev/null; then
    echo "setup: installing vhost-device-vsock 0.3.0 (cargo install, ~3 min)"
    cargo install --locked --quiet vhost-device-vsock --version 0.3.0
fi

# The launch-measurement reference (sev-snp-measure, Debian 12 and 13 OVMF), containerd, and the
# manifest validator (kubernetes-validate) for deploy/, rego-cpp for the policy differential test.
bash "$(dirname "$0")/setup-measure.sh"
bash "$(dirname "$0")/setup-containerd.sh"
bash "$(dirname "$0")/setup-deploy.sh"
bash "$(dirname "$0")/setup-policies.sh"

for tool in qemu-system-x86_64 protoc vhost-device-vsock; do
    command -v "$tool" >/dev/null || { echo "setup: $tool is still missing" >&2; exit 1; }
done
echo "setup: ok ($(qemu-system-x86_64 --version | head -n1); $(ls /boot/vmlinuz-* | tail -n1))"
