#!/usr/bin/env bash
# Shrinks corpus/<target>/ to its seeds (seed-*, written by examples/seeds.rs) and regression
# inputs (regression-*, inputs that once crashed a target) plus the inputs the fuzzer found that
# add edge coverage to them (libFuzzer -merge=1, hit counts ignored), so the committed corpora stay
# small. Run after fuzz/run.sh, before committing.
#
#   fuzz/minimize.sh [TARGET...]     (default: every target)
set -euo pipefail
cd "$(dirname "$0")"

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

for target in "${targets[@]}"; do
    cargo +nightly fuzz build "$target"
    found=$(mktemp -d)
    find "corpus/$target" -maxdepth 1 -type f ! -name 'seed-*' ! -name 'regression-*' -exec mv -t "$found" {} +
    if ! "target/x86_64-unknown-linux-gnu/release/$target" -merge=1 -use_counters=0 \
        "corpus/$target" "$found" >"$found.log" 2>&1; then
        echo "$target: merge failed (log $found.log); the found inputs are kept in $found" >&2
        exit 1
    fi
    rm -rf "$found" "$found.log"
    echo "$target: $(find "corpus/$target" -type f | wc -l) files," \
        "$(cat "corpus/$target"/* | wc -c) bytes"
done
