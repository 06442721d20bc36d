#!/usr/bin/env bash
# Pull benchmark (issue #4): a ~200 MB, 5-layer image in a local docker-registry; median of 3,
# interleaved (rotated order, `sync` before each), of the coffer-image pull (examples/pull.rs, release) versus
# `skopeo copy docker://… oci:…` + `umoci unpack`; plus encrypted (JWE RSA) versus plain pull.
# Needs docker-registry, skopeo, umoci (tests/setup.sh). Run from the workspace root as root.
set -euo pipefail

MB=${BENCH_LAYER_MB:-40}          # unpacked MB per layer (half random, half text); 5 layers
RUNS=${BENCH_RUNS:-3}
# The repository's ocicrypt vectors (tests/vectors/README.md).
VECTORS=$(cd "$(dirname "$0")/../../tests/vectors/ocicrypt" && pwd)
work=$(mktemp -d)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -q -p coffer-image --example pull
# The workspace builds for an explicit target triple (.cargo/config.toml), under CARGO_TARGET_DIR.
target_dir=${CARGO_TARGET_DIR:-target}
puller=$(find "$target_dir" -path '*/release/examples/pull' -type f -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
[ -x "$puller" ] || { echo "pull example not found under $target_dir" >&2; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > "$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $host
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://$host/v2/" >/dev/null && break; sleep 0.1; done

# Image: 5 layers, each half random (incompressible) and half text (compressible).
umoci init --layout "$work/layout" && umoci new --image "$work/layout:bench"
for i in 1 2 3 4 5; do
    umoci unpack --image "$work/layout:bench" "$work/bundle" >/dev/null
    mkdir -p "$work/bundle/rootfs/layer$i"
    head -c $((MB * 512 * 1024)) /dev/urandom > "$work/bundle/rootfs/layer$i/random.bin"
    { seq $((i * 100000000)) $((i * 100000000 + 99999999)) || true; } | head -c $((MB * 512 * 1024)) > "$work/bundle/rootfs/layer$i/text.txt"
    umoci repack --image "$work/layout:bench" "$work/bundle" && rm -rf "$work/bundle"
done
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:bench" "docker://$host/bench/app:plain"
skopeo copy -q --dest-tls-verify=false --encryption-key "jwe:$VECTORS/keys/rsa-pub.pem" \
    "oci:$work/layout:bench" "docker://$host/bench/app:enc"
echo "image: 5 layers, $(du -sh "$work/layout" | cut -f1) compressed (plain), $((MB * 5)) MB unpacked; registry holds plain + encrypted: $(du -sh "$work/registry" | cut -f1)"

now() { date +%s.%N; }
t_coffer() { local s; s=$(now); "$puller" "$host/bench/app:$1" "$work/c-root" --store "$work/c-store" --insecure "$host" ${2:+--key "$2"} >/dev/null; echo "$(now) - $s" | bc; rm -rf "$work/c-root" "$work/c-store"; }
t_skopeo() { local s; s=$(now); skopeo copy -q --src-tls-verify=false "docker://$host/bench/app:plain" "oci:$work/s-layout:x" && umoci unpack --image "$work/s-layout:x" "$work/s-bundle" >/dev/null; echo "$(now) - $s" | bc; rm -rf "$work/s-layout" "$work/s-bundle"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$work/coffer"; : > "$work/skopeo"; : > "$work/enc"
# Each round runs the three in a rotated order, each after `sync`: no kind always follows the
# one whose writeback it would pay for (skopeo + umoci write the most).
for round in $(seq "$RUNS"); do
    case $((round % 3)) in
        1) order="plain skopeo enc" ;;
        2) order="skopeo enc plain" ;;
        *) order="enc plain skopeo" ;;
    esac
    for kind in $order; do
        sync
        case $kind in
            plain) t_coffer plain >> "$work/coffer" ;;
            skopeo) t_skopeo >> "$work/skopeo" ;;
            enc) t_coffer enc "$VECTORS/keys/rsa-priv.pem" >> "$work/enc" ;;
        esac
    done
done
c=$(median < "$work/coffer"); s=$(median < "$work/skopeo"); e=$(median < "$work/enc")
echo "coffer-image pull:        median ${c}s  ($(tr '\n' ' ' < "$work/coffer"))"
echo "skopeo copy + umoci:      median ${s}s  ($(tr '\n' ' ' < "$work/skopeo"))"
echo "coffer-image encrypted:   median ${e}s  ($(tr '\n' ' ' < "$work/enc"))"
echo "speed-up vs skopeo+umoci: $(echo "scale=2; $s / $c" | bc)x (goal >= 3)"
echo "encrypted / plain:        $(echo "scale=2; $e / $c" | bc)x (goal <= 1.15)"
