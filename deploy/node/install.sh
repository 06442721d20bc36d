#!/usr/bin/env bash
# Installs Coffer on a Kubernetes node, or removes it again: `install.sh install|uninstall`.
# Run by the installer DaemonSet (deploy/runtime/installer.yaml) with the node's root filesystem at
# $COFFER_NODE_ROOT; tested against a temporary directory by tests/tests/deploy.rs.
#
# install:
#   1. copies the binaries ($COFFER_PAYLOAD/bin: containerd-shim-coffer-v2, coffer, coffer-agent,
#      vhost-device-vsock) to /opt/coffer/bin (0755) and links the shim and the CLI into
#      /usr/local/bin, where containerd finds shims;
#   2. copies the guest image ($COFFER_PAYLOAD/guest: vmlinux, vmlinuz, initramfs,
#      guest-image.json) to /opt/coffer/share/guest (0644);
#   3. writes the runtime configurations /etc/coffer/runtime.toml, runtime-snp.toml,
#      runtime-tdx.toml (0644) from $COFFER_CONFIG_SRC;
#   4. adds the containerd runtimes (containerd-coffer.toml) to /etc/containerd/config.toml as one
#      marked block (replaced, never duplicated, on a re-run); creates the file if there is none;
#   5. restarts containerd ($COFFER_RESTART_CMD) if config.toml changed, and labels the node
#      (coffer.dev/runtime, and coffer.dev/snp or coffer.dev/tdx when the host's KVM has SEV-SNP or
#      TDX enabled).
# uninstall reverts every step exactly: files and directories it created are removed (a directory
# only if empty), the marked block is cut out of config.toml (a config.toml it created is deleted),
# containerd is restarted and the labels are removed. What it created is listed in
# /var/lib/coffer-deploy/state. Files it did not create are never overwritten: install refuses.
#
# Environment:
#   COFFER_NODE_ROOT   the node's root filesystem (default /host)
#   COFFER_PAYLOAD     the directory holding bin/ and guest/ (default /opt/coffer-artifacts)
#   COFFER_CONFIG_SRC  the directory holding containerd-coffer.toml and runtime*.toml
#                      (default: this script's directory)
#   COFFER_RESTART_CMD shell command restarting containerd (default: systemctl in the host's
#                      namespaces through nsenter; needs hostPID)
#   COFFER_LABEL_CMD   command given one JSON merge patch of the node's labels (default: PATCH the
#                      Node $NODE_NAME through the API server with the pod's service account)
#   NODE_NAME          the node (the DaemonSet sets it from spec.nodeName)
set -euo pipefail

ROOT=${COFFER_NODE_ROOT:-/host}
ROOT=${ROOT%/}
PAYLOAD=${COFFER_PAYLOAD:-/opt/coffer-artifacts}
CONFIG_SRC=${COFFER_CONFIG_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
RESTART_CMD=${COFFER_RESTART_CMD:-nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd}

# Node paths (without $ROOT).
PREFIX=/opt/coffer
BIN_DIR=$PREFIX/bin
GUEST_DIR=$PREFIX/share/guest
CONF_DIR=/etc/coffer
LINK_DIR=/usr/local/bin
CONTAINERD_CONFIG=/etc/containerd/config.toml
STATE_DIR=/var/lib/coffer-deploy
STATE=$STATE_DIR/state

BINARIES=(containerd-shim-coffer-v2 coffer coffer-agent vhost-device-vsock)
LINKED=(containerd-shim-coffer-v2 coffer)
GUEST_FILES=(vmlinux vmlinuz initramfs guest-image.json)
RUNTIME_CONFIGS=(runtime.toml runtime-snp.toml runtime-tdx.toml)
DROP_IN=containerd-coffer.toml

BEGIN_MARK="# >>> coffer runtimes: managed by coffer's deploy/node/install.sh; do not edit >>>"
END_MARK="# <<< coffer runtimes <<<"
CONTAINERD_CONFIG_CHANGED=0
LABEL_RUNTIME=coffer.dev/runtime
LABEL_SNP=coffer.dev/snp
LABEL_TDX=coffer.dev/tdx

log() { echo "coffer-install: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- state: one "<kind> <node path>" line per thing install created, in creation order ---------

recorded() { [ -f "$ROOT$STATE" ] && grep -qxF "$1 $2" "$ROOT$STATE"; }
record() { recorded "$1" "$2" || echo "$1 $2" >>"$ROOT$STATE"; }

# Creates node directory $1 and its missing parents, recording each one created.
make_dir() {
    local dir=$1 missing=()
    while [ ! -d "$ROOT$dir" ]; do
        if [ -e "$ROOT$dir" ] || [ -L "$ROOT$dir" ]; then
            die "$ROOT$dir exists and is not a directory"
        fi
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    local d
    for d in "${missing[@]}"; do mkdir -m 0755 "$ROOT$d"; done
    # Recorded once all exist: the first call creates the state file's own directory.
    for d in "${missing[@]}"; do record dir "$d"; done
}

# Dies if node path $2 exists but is not a $1 ("file" or "link") a previous install created.
check_ours() {
    if { [ -e "$ROOT$2" ] || [ -L "$ROOT$2" ]; } && ! recorded "$1" "$2"; then
        die "$ROOT$2 exists and was not installed by coffer: refusing to overwrite it"
    fi
    local dir=$2
    while [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        if { [ -e "$ROOT$dir" ] || [ -L "$ROOT$dir" ]; } && [ ! -d "$ROOT$dir" ]; then
            die "$ROOT$dir exists and is not a directory"
        fi
    done
}

# Installs $1 as node file $2 with mode $3 (atomically: a temporary file, then rename).
put_file() {
    local src=$1 dst=$2 mode=$3
    [ -f "$src" ] || die "$src is missing"
    check_ours file "$dst"
    make_dir "$(dirname "$dst")"
    cp "$src" "$ROOT$dst.coffer-tmp"
    chmod "$mode" "$ROOT$dst.coffer-tmp"
    mv -f "$ROOT$dst.coffer-tmp" "$ROOT$dst"
    record file "$dst"
}

# Links node path $2 to $1.
put_link() {
    local target=$1 link=$2
    check_ours link "$link"
    make_dir "$(dirname "$link")"
    ln -sfn "$target" "$ROOT$link"
    record link "$link"
}

# --- containerd configuration ------------------------------------------------------------------

# Prints file $1 without the marked block (always ending in a newline).
without_block() {
    awk -v begin="$BEGIN_MARK" -v end="$END_MARK" '
        $0 == begin { inside = 1; next }
        inside && $0 == end { inside = 0; next }
        !inside { print }
    ' "$1"
}

has_block() { [ -f "$1" ] && grep -qxF "$BEGIN_MARK" "$1"; }

# Dies unless config.toml is absent or a version 2 file without coffer runtimes of its own.
check_containerd_config() {
    local config=$ROOT$CONTAINERD_CONFIG
    [ -e "$config" ] || return 0
    [ -f "$config" ] || die "$config is not a regular file"
    local base version
    base=$(without_block "$config")
    version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' <<<"$base" | head -n1)
    [ "$version" = 2 ] ||
        die "$config is not a containerd config version 2 (found '${version:-none}'): containerd 1.6/1.7 with 'version = 2' is supported"
    if grep -qE '^[[:space:]]*\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\.runtimes\.coffer(-snp|-tdx)?(\.options)?\]' <<<"$base"; then
        die "$config already defines a coffer runtime outside coffer's block: remove it first"
    fi
}

add_containerd_runtimes() {
    local config=$ROOT$CONTAINERD_CONFIG block=$CONFIG_SRC/$DROP_IN
    [ -f "$block" ] || die "$block is missing"
    check_containerd_config
    make_dir "$(dirname "$CONTAINERD_CONFIG")"
    local base
    base=$(mktemp)
    if [ -f "$config" ]; then
        without_block "$config" >"$base"
        # Byte-exactness on uninstall: the block goes after a final newline, and cutting it out
        # gives the original bytes back. A file without a final newline gets one (awk's output
        # always ends in one), and uninstall takes it away again.
        if ! has_block "$config" && [ -s "$config" ] && [ -n "$(tail -c1 "$config")" ]; then
            record newline-added "$CONTAINERD_CONFIG"
        fi
    else
        record config-created "$CONTAINERD_CONFIG"
        printf 'version = 2\n' >"$base"
    fi
    record block "$CONTAINERD_CONFIG"
    { cat "$base"; echo "$BEGIN_MARK"; cat "$block"; echo "$END_MARK"; } >"$config.coffer-tmp"
    rm -f "$base"
    # Keep the original file's owner and mode.
    if [ -f "$config" ]; then
        chmod --reference="$config" "$config.coffer-tmp"
        chown --reference="$config" "$config.coffer-tmp" 2>/dev/null || true
    else
        chmod 0644 "$config.coffer-tmp"
    fi
    if [ -f "$config" ] && cmp -s "$config" "$config.coffer-tmp"; then
        rm -f "$config.coffer-tmp"
        return 0
    fi
    mv -f "$config.coffer-tmp" "$config"
    CONTAINERD_CONFIG_CHANGED=1
}

remove_containerd_runtimes() {
    local config=$ROOT$CONTAINERD_CONFIG
    [ -f "$config" ] || return 0
    local rest
    rest=$(mktemp)
    without_block "$config" >"$rest"
    if recorded newline-added "$CONTAINERD_CONFIG" && [ -s "$rest" ]; then
        # Drop the newline install added (the file's last byte).
        head -c -1 "$rest" >"$rest.trim" && mv -f "$rest.trim" "$rest"
    fi
    if recorded config-created "$CONTAINERD_CONFIG" && [ "$(cat "$rest")" = "version = 2" ]; then
        rm -f "$rest" "$config"
        return 0
    fi
    cat "$rest" >"$config"
    rm -f "$rest"
}

# --- node labels ---------------------------------------------------------------------------------

# Applies JSON merge patch $1 to the node's labels.
patch_labels() {
    local patch="{\"metadata\":{\"labels\":$1}}"
    if [ -n "${COFFER_LABEL_CMD:-}" ]; then
        # shellcheck disable=SC2086 # the command is a word list by design
        $COFFER_LABEL_CMD "$patch"
        return
    fi
    [ -n "${NODE_NAME:-}" ] || die "NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)"
    local sa=/var/run/secrets/kubernetes.io/serviceaccount
    curl --silent --show-error --fail --cacert "$sa/ca.crt" \
        -H "Authorization: Bearer $(cat "$sa/token")" \
        -H "Content-Type: application/merge-patch+json" \
        -X PATCH --data "$patch" \
        "https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}/api/v1/nodes/${NODE_NAME}" \
        >/dev/null
}

kvm_param_on() { [ -r "$ROOT/sys/module/$1/parameters/$2" ] && grep -qiE '^(y|1)' "$ROOT/sys/module/$1/parameters/$2"; }

# --- the two commands ----------------------------------------------------------------------------

restart_containerd() {
    log "restarting containerd: $RESTART_CMD"
    sh -c "$RESTART_CMD"
}

install() {
    local name
    for name in "${BINARIES[@]}"; do [ -f "$PAYLOAD/bin/$name" ] || die "$PAYLOAD/bin/$name is missing"; done
    for name in "${GUEST_FILES[@]}"; do [ -f "$PAYLOAD/guest/$name" ] || die "$PAYLOAD/guest/$name is missing"; done
    for name in "${RUNTIME_CONFIGS[@]}" "$DROP_IN"; do [ -f "$CONFIG_SRC/$name" ] || die "$CONFIG_SRC/$name is missing"; done
    [ -x "$ROOT/usr/bin/qemu-system-x86_64" ] || [ -x "$ROOT/usr/local/bin/qemu-system-x86_64" ] ||
        die "qemu-system-x86_64 is not installed on the node (e.g. Debian's qemu-system-x86)"

    # Refuse before touching anything: a file in the way that is not ours stops the install.
    for name in "${BINARIES[@]}"; do check_ours file "$BIN_DIR/$name"; done
    for name in "${LINKED[@]}"; do check_ours link "$LINK_DIR/$name"; done
    for name in "${GUEST_FILES[@]}"; do check_ours file "$GUEST_DIR/$name"; done
    for name in "${RUNTIME_CONFIGS[@]}"; do check_ours file "$CONF_DIR/$name"; done
    check_containerd_config

    make_dir "$STATE_DIR"
    log "installing into $ROOT"
    for name in "${BINARIES[@]}"; do put_file "$PAYLOAD/bin/$name" "$BIN_DIR/$name" 0755; done
    for name in "${LINKED[@]}"; do put_link "$BIN_DIR/$name" "$LINK_DIR/$name"; done
    for name in "${GUEST_FILES[@]}"; do put_file "$PAYLOAD/guest/$name" "$GUEST_DIR/$name" 0644; done
    for name in "${RUNTIME_CONFIGS[@]}"; do put_file "$CONFIG_SRC/$name" "$CONF_DIR/$name" 0644; done
    # containerd reads its configuration only at start; shims and runtime configurations are read
    # per pod. So a re-run that leaves config.toml as it was restarts nothing.
    add_containerd_runtimes
    if [ "$CONTAINERD_CONFIG_CHANGED" = 1 ]; then
        restart_containerd
    else
        log "containerd configuration unchanged: not restarting containerd"
    fi

    local snp=null tdx=null
    kvm_param_on kvm_amd sev_snp && snp='"true"'
    kvm_param_on kvm_intel tdx && tdx='"true"'
    patch_labels "{\"$LABEL_RUNTIME\":\"true\",\"$LABEL_SNP\":$snp,\"$LABEL_TDX\":$tdx}"
    log "installed (snp: $snp, tdx: $tdx)"
}

uninstall() {
    if [ ! -f "$ROOT$STATE" ]; then
        log "nothing to uninstall: $ROOT$STATE does not exist"
        patch_labels "{\"$LABEL_RUNTIME\":null,\"$LABEL_SNP\":null,\"$LABEL_TDX\":null}"
        return 0
    fi
    # Labels first: the scheduler stops placing coffer pods here before the runtime goes away.
    patch_labels "{\"$LABEL_RUNTIME\":null,\"$LABEL_SNP\":null,\"$LABEL_TDX\":null}"
    remove_containerd_runtimes
    local entries=() i kind path
    mapfile -t entries <"$ROOT$STATE"
    rm -f "$ROOT$STATE"
    for ((i = ${#entries[@]} - 1; i >= 0; i--)); do
        kind=${entries[i]%% *}
        path=${entries[i]#* }
        case $kind in
        file | link) rm -f "$ROOT$path" ;;
        dir) rmdir "$ROOT$path" 2>/dev/null || log "keeping $ROOT$path: not empty" ;;
        block | newline-added | config-created) ;;
        *) log "unknown state entry: ${entries[i]}" ;;
        esac
    done
    restart_containerd
    log "uninstalled from $ROOT"
}

case ${1:-} in
install) install ;;
uninstall) uninstall ;;
*)
    echo "usage: $0 install|uninstall" >&2
    exit 2
    ;;
esac
