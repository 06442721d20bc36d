#!/usr/bin/env bash
# Installs what the launch-measurement suite (tests/tests/measure_cli.rs) compares against,
# idempotently. Run as root on Debian 12. Registries used: Debian (apt) and PyPI (pip).
#
#   - Debian 12's `ovmf` package:            /usr/share/ovmf/OVMF.fd
#   - Debian 13 (trixie)'s OVMF.fd, unpacked into $COFFER_OVMF_TRIXIE_DIR
#     (default /var/cache/coffer/ovmf-trixie) with a private apt configuration: trixie is never
#     added to the system's apt sources.
#   - `sev-snp-measure` from PyPI in the venv $COFFER_VENV (default /opt/coffer/venv).
set -euo pipefail

TRIXIE_DIR=${COFFER_OVMF_TRIXIE_DIR:-/var/cache/coffer/ovmf-trixie}
VENV=${COFFER_VENV:-/opt/coffer/venv}
SEV_SNP_MEASURE_VERSION=${SEV_SNP_MEASURE_VERSION:-0.0.13}
export DEBIAN_FRONTEND=noninteractive

need_apt=()
[ -f /usr/share/ovmf/OVMF.fd ] || need_apt+=(ovmf)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup-measure: installing ${need_apt[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Debian 13's OVMF.fd through a private apt state: its own sources list, lists and cache.
if [ ! -s "$TRIXIE_DIR/OVMF.fd" ]; then
    echo "setup-measure: fetching Debian 13 (trixie) ovmf into $TRIXIE_DIR"
    apt_root="$TRIXIE_DIR/apt"
    mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial" "$TRIXIE_DIR/pkg"
    echo "deb http://deb.debian.org/debian trixie main" >"$apt_root/sources.list"
    apt_private=(
        -o "Dir::Etc::sourcelist=$apt_root/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_root/lists"
        -o "Dir::Cache=$apt_root/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root"
    )
    apt-get -qq "${apt_private[@]}" update
    (cd "$TRIXIE_DIR/pkg" && rm -f ovmf_*.deb && apt-get -qq "${apt_private[@]}" download ovmf)
    deb=$(ls "$TRIXIE_DIR"/pkg/ovmf_*.deb | head -n1)
    rm -rf "$TRIXIE_DIR/root"
    dpkg -x "$deb" "$TRIXIE_DIR/root"
    # trixie ships the SEV-capable combined image as /usr/share/ovmf/OVMF.fd (as bookworm does).
    found=""
    for candidate in usr/share/ovmf/OVMF.fd usr/share/qemu/OVMF.fd; do
        if [ -f "$TRIXIE_DIR/root/$candidate" ]; then
            found="$TRIXIE_DIR/root/$candidate"
            break
        fi
    done
    [ -n "$found" ] || { echo "setup-measure: no OVMF.fd in $deb" >&2; exit 1; }
    cp "$(readlink -f "$found")" "$TRIXIE_DIR/OVMF.fd.tmp"
    mv "$TRIXIE_DIR/OVMF.fd.tmp" "$TRIXIE_DIR/OVMF.fd"
    basename "$deb" >"$TRIXIE_DIR/SOURCE"
fi

# The reference calculator from PyPI, in its own venv.
if ! "$VENV/bin/sev-snp-measure" --help >/dev/null 2>&1; then
    echo "setup-measure: installing sev-snp-measure $SEV_SNP_MEASURE_VERSION into $VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "sev-snp-measure==$SEV_SNP_MEASURE_VERSION"
fi

for f in /usr/share/ovmf/OVMF.fd "$TRIXIE_DIR/OVMF.fd" "$VENV/bin/sev-snp-measure"; do
    [ -e "$f" ] || { echo "setup-measure: $f is still missing" >&2; exit 1; }
done
echo "setup-measure: ok"
echo "  debian 12 OVMF.fd: /usr/share/ovmf/OVMF.fd ($(dpkg-query -W -f '${Version}' ovmf))"
echo "  debian 13 OVMF.fd: $TRIXIE_DIR/OVMF.fd (from $(cat "$TRIXIE_DIR/SOURCE"))"
echo "  sev-snp-measure:   $VENV/bin/sev-snp-measure ($("$VENV/bin/pip" show sev-snp-measure 2>/dev/null | sed -n 's/^Version: //p'))"
echo "  python:            $VENV/bin/python3"
