#!/usr/bin/env bash
# test.sh - what CI runs (.ci/run): installs PostgreSQL 15 and moto if missing, starts a
# local S3 server (moto) for the S3 tests, builds everything and runs the whole test suite.
# The Rust tests read WALSEAL_TEST_S3_ENDPOINT / WALSEAL_TEST_S3_BUCKET (and the AWS_*
# variables exported by start_moto) and use PostgreSQL from /usr/lib/postgresql/15/bin.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

ensure_pg15
ensure_moto
start_moto
trap stop_moto EXIT

log "cargo build --release --all-targets"
cargo build --release --all-targets

log "cargo test --release"
out=$(mktemp /tmp/walseal-test-output.XXXXXX)
set +e
cargo test --release -- --test-threads=2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
log "cargo test exited with $status"
# One closing line for the whole suite (CI reads it): the sums of every "test result:" line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
rm -f "$out"
exit "$status"
