#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the named ones) for SECONDS each, one after the other, on the
# committed corpora (new inputs land in corpus/<target>/, findings in artifacts/<target>/).
# Exits non-zero if any target crashed, timed out, ran out of memory or failed to build.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 60 seconds, every target)
#
# Needs the nightly toolchain and cargo-fuzz (see README.md). Each run's log and a summary line
# (executions, exec/s, coverage, corpus, peak RSS) go to $FUZZ_LOG_DIR (default
# fuzz/target/fuzz-logs). Temporary roots (tar_unpack) go to $TMPDIR, /dev/shm by
# default when it exists: on a disk-backed /tmp, tar_unpack runs about five times slower.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi

seconds=${1:-60}
shift || true
if [[ ! $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
logs=$(mkdir -p "${FUZZ_LOG_DIR:-target/fuzz-logs}" && cd "${FUZZ_LOG_DIR:-target/fuzz-logs}" && pwd)

failed=()
for target in "${targets[@]}"; do
    log="$logs/$target.log"
    echo "== $target: ${seconds}s (log: $log)"
    status=0
    cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*(cov|ft):' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
    files=$(find "corpus/$target" -type f | wc -l)
    summary="$target: status=$status execs=${execs:-?} exec/s=${rate:-?} cov=${cov:-?} ft=${ft:-?} corp=${corp:-?} corpus_files=$files peak_rss_mb=${rss:-?}"
    echo "$summary" | tee -a "$logs/summary.txt"
    if ((status != 0)); then
        grep -E 'ERROR|panicked|deadly signal|Test unit written|timeout' "$log" | head -5 >&2 || true
        failed+=("$target")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} target(s) ran ${seconds}s without a finding"
