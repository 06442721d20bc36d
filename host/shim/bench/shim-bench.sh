#!/usr/bin/env bash
# Shim benchmark: (a) the resident memory of containerd-shim-coffer-v2 per pod (VmRSS of the shim
# process while a pod runs; goal ≤ 10 MiB), and (b) `ctr run … echo hi` → first output through
# containerd and the shim, against `coffer sandbox run --rootfs … -- echo hi` on the same busybox
# image and guest image (median of N, interleaved; goal: the shim path adds ≤ 10 %).
#
# It runs a private containerd (root, state, socket and config in a temporary directory, CRI off,
# as tests/src/containerd.rs does); the shim is found on containerd's PATH, which leads with the
# binary directory. Needs what tests/setup.sh installs (containerd, ctr, umoci, qemu, busybox,
# vhost-device-vsock). Run as root.
#
# Usage: host/shim/bench/shim-bench.sh [RUNS]          (default 3)
#   COFFER_BIN_DIR  directory with containerd-shim-coffer-v2, coffer, coffer-agent
#                   (default target/x86_64-unknown-linux-gnu/$COFFER_PROFILE)
#   COFFER_PROFILE  release (default; built if missing) or debug
#   COFFER_BENCH_KEEP=1 keeps the temporary directory
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

RUNS=${1:-3}
PROFILE=${COFFER_PROFILE:-release}
BIN_DIR=${COFFER_BIN_DIR:-$PWD/target/x86_64-unknown-linux-gnu/$PROFILE}
RUNTIME=io.containerd.coffer.v2
NS=coffer-bench
IMAGE=coffer.bench/busybox:latest

for tool in containerd ctr umoci qemu-system-x86_64 vhost-device-vsock; do
    command -v "$tool" >/dev/null || { echo "shim-bench: $tool is missing: run tests/setup.sh" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "shim-bench: /bin/busybox is missing: run tests/setup.sh" >&2; exit 1; }
if [ -z "${COFFER_BIN_DIR:-}" ] && [ "$PROFILE" = release ]; then
    cargo build --release --locked -p coffer-shim -p coffer-cli -p coffer-agent
fi
for b in containerd-shim-coffer-v2 coffer coffer-agent; do
    [ -x "$BIN_DIR/$b" ] || { echo "shim-bench: $BIN_DIR/$b is missing (cargo build)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/coffer-shim-bench.XXXXXX)
CONTAINERD_PID=""
cleanup() {
    if [ -n "$CONTAINERD_PID" ]; then
        ctr_ tasks kill -s SIGKILL bench-rss >/dev/null 2>&1 || true
        ctr_ tasks rm -f bench-rss >/dev/null 2>&1 || true
        ctr_ containers rm bench-rss >/dev/null 2>&1 || true
        kill "$CONTAINERD_PID" 2>/dev/null || true
        wait "$CONTAINERD_PID" 2>/dev/null || true
    fi
    if [ "${COFFER_BENCH_KEEP:-0}" = 1 ]; then
        echo "shim-bench: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

ctr_() { ctr --address "$WORK/containerd/containerd.sock" --namespace "$NS" "$@"; }

# --- the guest image, the rootfs, the OCI image ---------------------------------------------------
echo "shim-bench: building the guest image" >&2
"$BIN_DIR/coffer" image build --agent "$BIN_DIR/coffer-agent" --out "$WORK/guest" >/dev/null

make_rootfs() {
    local dir=$1
    mkdir -p "$dir"/{bin,etc,proc,sys,dev,tmp,root}
    cp /bin/busybox "$dir/bin/busybox"
    local applet
    for applet in sh echo cat sleep true; do ln -sf busybox "$dir/bin/$applet"; done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$dir/etc/passwd"
    printf 'root:x:0:\n' >"$dir/etc/group"
}
make_rootfs "$WORK/rootfs"
umoci init --layout "$WORK/layout" >/dev/null
umoci new --image "$WORK/layout:latest" >/dev/null
umoci unpack --image "$WORK/layout:latest" "$WORK/bundle" >/dev/null
make_rootfs "$WORK/bundle/rootfs"
umoci repack --image "$WORK/layout:latest" "$WORK/bundle" >/dev/null
umoci config --image "$WORK/layout:latest" --config.cmd /bin/sh >/dev/null
tar -C "$WORK/layout" -cf "$WORK/busybox-oci.tar" .

# --- the runtime configuration both paths use ----------------------------------------------------
cat >"$WORK/runtime.toml" <<EOF
state_dir = "$WORK/state"
[guest]
image_dir = "$WORK/guest"
boot_timeout_secs = 120
EOF

# --- a private containerd ------------------------------------------------------------------------
mkdir -p "$WORK/containerd"
cat >"$WORK/containerd/config.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/containerd/containerd.sock"
[ttrpc]
  address = "$WORK/containerd/containerd.sock.ttrpc"
EOF
PATH="$BIN_DIR:$PATH" COFFER_RUNTIME_CONFIG="$WORK/runtime.toml" \
    containerd --config "$WORK/containerd/config.toml" >"$WORK/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 1 300); do
    ctr_ version >/dev/null 2>&1 && break
    sleep 0.1
done
ctr_ version >/dev/null 2>&1 || { echo "shim-bench: containerd did not start; log: $WORK/containerd.log" >&2; exit 1; }
ctr_ images import --base-name coffer.bench/busybox "$WORK/busybox-oci.tar" >/dev/null

# Milliseconds from starting "$@" to its first line of output, which must be "hi"; the rest of the
# output is drained and the command must succeed.
first_output_ms() {
    local start line now
    start=$(date +%s%N)
    exec 3< <("$@" 2>"$WORK/last.err")
    IFS= read -r line <&3 || line=""
    now=$(date +%s%N)
    cat <&3 >/dev/null
    exec 3<&-
    wait $! || { echo "shim-bench: $* failed: $(cat "$WORK/last.err")" >&2; return 1; }
    [ "$line" = hi ] || { echo "shim-bench: $* printed '$line', not 'hi'" >&2; return 1; }
    echo $(((now - start) / 1000000))
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- (b) time to first output, interleaved -------------------------------------------------------
echo "shim-bench: warm-up (one run of each path)" >&2
first_output_ms ctr_ run --runtime "$RUNTIME" --rm "$IMAGE" bench-warm echo hi >/dev/null
first_output_ms "$BIN_DIR/coffer" sandbox run --config "$WORK/runtime.toml" --rootfs "$WORK/rootfs" -- echo hi >/dev/null

ctr_ms=()
coffer_ms=()
for i in $(seq 1 "$RUNS"); do
    t=$(first_output_ms ctr_ run --runtime "$RUNTIME" --rm "$IMAGE" "bench-$i" echo hi)
    ctr_ms+=("$t")
    t2=$(first_output_ms "$BIN_DIR/coffer" sandbox run --config "$WORK/runtime.toml" --rootfs "$WORK/rootfs" -- echo hi)
    coffer_ms+=("$t2")
    echo "shim-bench: run $i: ctr run $t ms, coffer sandbox run $t2 ms" >&2
done

# --- (a) the shim's resident memory while a pod runs ---------------------------------------------
ctr_ run --runtime "$RUNTIME" -d "$IMAGE" bench-rss sleep 600 >/dev/null
for _ in $(seq 1 600); do
    ctr_ tasks ls 2>/dev/null | awk '$1 == "bench-rss" && $3 == "RUNNING" { found = 1 } END { exit !found }' && break
    sleep 0.2
done
# The long-lived shim of this pod: its command line names the task's id.
shim_pid=""
for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)
    case $cmd in
    *containerd-shim-coffer-v2*"-id bench-rss"*) shim_pid=${p#/proc/} ;;
    esac
done
[ -n "$shim_pid" ] || { echo "shim-bench: no shim process for bench-rss" >&2; exit 1; }
sleep 2 # let the pod settle (stdio copies, event publishing) before reading
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
shim_rss_kib=$(status_kib "$shim_pid" VmRSS)
shim_anon_kib=$(status_kib "$shim_pid" RssAnon)
shim_file_kib=$(status_kib "$shim_pid" RssFile)
shim_hwm_kib=$(status_kib "$shim_pid" VmHWM)
child_rss=""
read -r -a children <<<"$(cat "/proc/$shim_pid/task/"*/children 2>/dev/null | tr '\n' ' ')"
for c in "${children[@]}"; do
    child_rss+=" $(tr '\0' ' ' <"/proc/$c/cmdline" | awk '{ print $1 }' | xargs basename)=$(( $(status_kib "$c" VmRSS) / 1024 ))MiB"
done
ctr_ tasks kill -s SIGKILL bench-rss >/dev/null
for _ in $(seq 1 100); do
    ctr_ tasks ls 2>/dev/null | awk '$1 == "bench-rss" && $3 == "RUNNING" { found = 1 } END { exit found }' && break
    sleep 0.2
done
ctr_ tasks rm -f bench-rss >/dev/null 2>&1 || true
ctr_ containers rm bench-rss >/dev/null 2>&1 || true

# --- report --------------------------------------------------------------------------------------
ctr_med=$(median "${ctr_ms[@]}")
coffer_med=$(median "${coffer_ms[@]}")
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "shim benchmark ($PROFILE binaries from $BIN_DIR; $(nproc) CPUs, load average $load)"
awk -v r="$shim_rss_kib" -v a="$shim_anon_kib" -v f="$shim_file_kib" -v h="$shim_hwm_kib" 'BEGIN {
    printf "  shim RSS per pod: %d KiB = %.1f MiB (RssAnon %d KiB, RssFile %d KiB, peak %d KiB); goal <= 10 MiB\n", r, r / 1024, a, f, h
}'
echo "  pod's other processes:${child_rss:- (none found)}"
echo "  ctr run -> first output:           ${ctr_ms[*]} ms (median $ctr_med ms)"
echo "  coffer sandbox run -> first output: ${coffer_ms[*]} ms (median $coffer_med ms)"
awk -v a="$ctr_med" -v b="$coffer_med" 'BEGIN { printf "  ratio ctr/coffer: %.3f (shim path adds %+.1f %%; goal <= +10 %%)\n", a / b, (a / b - 1) * 100 }'
