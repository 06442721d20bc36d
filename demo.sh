#!/usr/bin/env bash
# The main job, locally: build Coffer and its guest image, then run a container in a fresh VM.
# (The confidential demo — encrypted, signed image, key released only to the attested guest —
# replaces this once attestation, image-rs and policy land; see issue #8.)
set -euo pipefail
cd "$(dirname "$0")"
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

bash tests/setup.sh
cargo build --workspace --locked
bin=target/x86_64-unknown-linux-gnu/debug
image_dir=${COFFER_IMAGE_DIR:-/var/lib/coffer/guest}
"$bin/coffer" image build --out "$image_dir"

rootfs=$(mktemp -d /tmp/coffer-demo-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp,root}
cp /bin/busybox "$rootfs/bin/"
for applet in sh echo cat uname id hostname ls; do ln -s busybox "$rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"

echo "== running a container in a Coffer VM"
"$bin/coffer" sandbox run --image-dir "$image_dir" --rootfs "$rootfs" -e GREETING="hello from Coffer" -- \
    sh -c 'echo "$GREETING"; echo "kernel: $(uname -r), hostname: $(hostname), uid: $(id -u)"'
