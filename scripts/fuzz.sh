#!/usr/bin/env bash
# fuzz.sh - builds the cargo-fuzz targets (fuzz/) and runs each one, from the seed corpora in
# testdata/fuzz/<target>/, for a bounded time (default 8 s each: about a minute in all, as CI
# runs it) or a number of executions; prints each target's execution count. New inputs go to
# a scratch corpus, not into testdata. A crash fails the script and leaves its input in
# fuzz/artifacts/<target>/ (make it a unit test, then fix it).
#
#   bash scripts/fuzz.sh                 # every target, 8 s each
#   FUZZ_SECONDS=60 bash scripts/fuzz.sh tar sealed_object
#   FUZZ_RUNS=10000000 bash scripts/fuzz.sh   # the long runs recorded in docs/fuzzing.md
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
# One cargo build at a time on this machine (other builds take the same lock).
flock /tmp/walseal-cargo.lock cargo +nightly fuzz build -O
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
limit="-max_total_time=${FUZZ_SECONDS:-8}"
[ -n "${FUZZ_RUNS:-}" ] && limit="-runs=$FUZZ_RUNS"
status=0
for t in "${targets[@]}"; do
    scratch=$(mktemp -d "/tmp/walseal-fuzz-$t.XXXXXX")
    log="$scratch/log"
    if cargo +nightly fuzz run -O "$t" "$scratch" "$ROOT/testdata/fuzz/$t" -- \
        "$limit" -rss_limit_mb=2048 -max_len=131072 >"$log" 2>&1; then
        runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
        echo "fuzz $t: ok, ${runs:-see $log}"
        rm -rf "$scratch"
    else
        echo "fuzz $t: FAILED (log $log, input in fuzz/artifacts/$t/)"
        tail -30 "$log"
        status=1
    fi
done
exit $status
