#!/usr/bin/env bash
# The main job, locally: the confidential pod in one command. Builds Coffer and its guest image,
# then, with no other input:
#   - starts the key broker coffer-kbs over HTTPS (a CA generated here) holding a key-encryption key;
#     this host has no TEE, so sample evidence is explicitly enabled (on SNP/TDX the guest attests
#     with its hardware and a broker would refuse sample evidence);
#   - starts a local registry, builds a small image, encrypts its layer with the broker-held key
#     (`coffer image encrypt`), pushes it and signs it (`coffer image sign`, cosign-style);
#   - generates the pod's initdata with `coffer policy gen` (a policy admitting exactly this pod,
#     the image pinned by digest, the broker's URL and CA, a signature policy requiring the key);
#   - launches the sandbox: the guest pulls the encrypted image itself, attests to the broker for
#     the key, decrypts and unpacks it, and runs the container. The host never sees the plaintext.
# Each step prints its duration; the guest reports its own pull steps (resolve, attestation, key
# release, download, decrypt + verify + unpack) and the pull's progress.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

bash tests/setup.sh
# Release builds: the host tools, and the guest agent by its own cargo invocation (guest/build.sh:
# only the guest's features, LTO). A second run rebuilds nothing.
cargo build --release --locked -p coffer-cli -p coffer-attestation --bin coffer --bin coffer-kbs
agent=$(bash guest/build.sh)
bin=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
image_dir=${COFFER_IMAGE_DIR:-/var/lib/coffer/guest}

work=$(mktemp -d /tmp/coffer-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s%N)
step_start=$started
step() {
    local now
    now=$(date +%s%N)
    printf '== %-58s %6d ms\n' "$1" $(((now - step_start) / 1000000))
    step_start=$now
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "demo: nothing listens on port $1" >&2
    return 1
}

"$bin/coffer" image build --agent "$agent" --out "$image_dir" >/dev/null
step "guest image ($image_dir)"

# The broker's TLS certificate, from a CA made for this run.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=coffer-demo-ca \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/kbs.key" -out "$work/kbs.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/kbs.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 1 -extfile "$work/san.ext" -out "$work/kbs.crt" 2>/dev/null

# The key-encryption key lives only in the broker's resource store (and, for encryption, here).
mkdir -p "$work/kbs-resources/demo/key"
head -c 32 /dev/urandom >"$work/kbs-resources/demo/key/image"
kbs_port=$(free_port)
cat >"$work/policy.rego" <<'EOF'
package policy

import rego.v1

default allow := false

# Demo only: this host has no TEE, so sample evidence is accepted for the one demo key.
allow if {
	data.plugin == "resource"
	data["resource-path"] == "demo/key/image"
}
EOF
cat >"$work/kbs.toml" <<EOF
[http]
listen = "127.0.0.1:$kbs_port"
tls_cert = "$work/kbs.crt"
tls_key = "$work/kbs.key"

[resources]
dir = "$work/kbs-resources"

[policy]
file = "$work/policy.rego"

[attestation]
allow_sample = true
EOF
"$bin/coffer-kbs" --config "$work/kbs.toml" >"$work/kbs.log" 2>&1 &
pids+=($!)
wait_port "$kbs_port"
step "key broker coffer-kbs on https://127.0.0.1:$kbs_port"

reg_port=$(free_port)
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$reg_port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_port "$reg_port"
registry=127.0.0.1:$reg_port
step "registry on $registry"

# A small image: busybox and a message only the guest will ever see in plaintext.
layout=$work/layout
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:v1"
umoci config --image "$layout:v1" \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env "HOME=/root" --config.cmd /bin/sh
umoci unpack --rootless --image "$layout:v1" "$bundle" >/dev/null
mkdir -p "$bundle/rootfs"/{bin,etc,proc,sys,dev,tmp,root,app}
cp /bin/busybox "$bundle/rootfs/bin/"
for applet in sh cat echo; do ln -sf busybox "$bundle/rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$bundle/rootfs/etc/passwd"
echo "hello from inside the confidential guest: this line was encrypted until the guest decrypted it" \
    >"$bundle/rootfs/app/message.txt"
umoci repack --image "$layout:v1" "$bundle" >/dev/null
step "demo image built (umoci)"

digest=$("$bin/coffer" image encrypt --layout "$layout" --tag v1 --to "$registry/demo/secret:v1" \
    --insecure-registry "$registry" --kek "kbs:///demo/key/image=$work/kbs-resources/demo/key/image")
image="$registry/demo/secret@$digest"
step "encrypted with the broker-held key and pushed"

# Signed with Coffer's own cosign-style signer; the pod's initdata admits only images this key
# signed (sigstoreSigned), so a swapped or re-signed image is refused inside the guest.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/cosign.key" 2>/dev/null
"$bin/coffer" image sign "$image" --key "$work/cosign.key" --public-key-out "$work/cosign.pub" \
    --insecure-registry "$registry" >/dev/null
cat >"$work/image-policy.json" <<EOF
{
  "default": [{"type": "reject"}],
  "transports": {
    "docker": {
      "$registry/demo/secret": [
        {"type": "sigstoreSigned", "keyData": "$(base64 -w0 "$work/cosign.pub")",
         "signedIdentity": {"type": "matchRepository"}}
      ]
    }
  }
}
EOF
step "signed (coffer image sign) and signature policy written"

cat >"$work/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: demo
  annotations:
    # The demo prints the container's output; without this the guest refuses to stream it.
    coffer.dev/allow-logs: "true"
spec:
  containers:
    - name: app
      image: $image
      command: ["/bin/cat", "/app/message.txt"]
EOF
"$bin/coffer" policy gen "$work/pod.yaml" --insecure-registry "$registry" \
    --kbs-url "https://127.0.0.1:$kbs_port" --kbs-ca "$work/ca.pem" --kbs-evidence sample \
    --image-policy "$work/image-policy.json" -o "$work/initdata.toml"
step "initdata generated (coffer policy gen)"

echo "== running the pod in a Coffer VM (guest pull, attestation, key release, decrypt)"
"$bin/coffer" sandbox run --image-dir "$image_dir" --state-dir "$work/state" \
    --image "$image" --initdata "$work/initdata.toml" \
    --registry-tunnel "$registry" --registry-tunnel "127.0.0.1:$kbs_port" --timings \
    -- /bin/cat /app/message.txt
step "pod finished"
total=$((($(date +%s%N) - started) / 1000000))
echo "== demo done in $total ms"
