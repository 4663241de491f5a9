#!/usr/bin/env bash
# bench-drill.sh - a restore drill on a real database of some size: a PostgreSQL 18.6 cluster
# (the full install, with pg_amcheck and data checksums) filled by `pgbench -i -s SCALE`
# (scale 200 is about 3 GiB), archiving through walseal; a backup; LOAD_SECONDS of pgbench
# (the WAL the drill replays); then `walseal drill` of the latest backup to the end of the
# archive under /usr/bin/time (peak RSS), and the primary's row counts for comparison.
# The drill's own output (restore and replay times, checks, row counts) goes to the report.
#
# Usage (as root):   bash scripts/bench-drill.sh
#   SCALE=20 LOAD_SECONDS=20 bash scripts/bench-drill.sh     # quicker
# Knobs: SCALE (200), LOAD_SECONDS (60), CLIENTS (4), RESULTS_FILE, BENCH_TMPDIR (/tmp),
#        WALSEAL_BIN (else `cargo build --release`), KEEP_TMP=1.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SCALE=${SCALE:-200}
LOAD_SECONDS=${LOAD_SECONDS:-60}
CLIENTS=${CLIENTS:-4}
KEEP_TMP=${KEEP_TMP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
bench_knobs SCALE LOAD_SECONDS CLIENTS
[ -x /usr/bin/time ] || die "GNU time is missing (apt-get install time)"
PG_BIN=$(ensure_pg18_full)
SRC_BIN=$(walseal_binary)

BENCH_TMPDIR=$(cd "$BENCH_TMPDIR" && pwd -P)
WORK=$(mktemp -d "$BENCH_TMPDIR/walseal-bench-drill.XXXXXX")
chmod 755 "$WORK"
PGDIR=$WORK/pg
cleanup() {
    local rc=$?
    set +e
    pg_stop "$PGDIR"
    if [ "$KEEP_TMP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK" "$PGDIR.log" "$PGDIR.sock"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/keys" "$WORK/drills"
cp "$SRC_BIN" "$WORK/bin/walseal"
chown -R "$PG_USER:" "$WORK"
export WALSEAL_REPO=file://$WORK/repo WALSEAL_KEY_FILE=$WORK/keys/master.key
as_pg "$WORK/bin/walseal" keygen -o "$WALSEAL_KEY_FILE" >/dev/null
as_pg env WALSEAL_REPO="$WALSEAL_REPO" WALSEAL_KEY_FILE="$WALSEAL_KEY_FILE" "$WORK/bin/walseal" init >/dev/null
walseal() { as_pg env WALSEAL_REPO="$WALSEAL_REPO" WALSEAL_KEY_FILE="$WALSEAL_KEY_FILE" "$WORK/bin/walseal" "$@"; }

port=$(free_port)
pg_init "$PGDIR" "$port"
pg_conf "$PGDIR" \
    "archive_mode = on" \
    "archive_command = 'WALSEAL_REPO=$WALSEAL_REPO WALSEAL_KEY_FILE=$WALSEAL_KEY_FILE $WORK/bin/walseal wal-push %p'" \
    "max_wal_size = 4GB" "shared_buffers = 512MB" "synchronous_commit = off"
pg_start "$PGDIR"
version=$(psql_at "$port" "SHOW server_version")
log "PostgreSQL $version on port $port; pgbench -i -s $SCALE"
t=$(date +%s)
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$SCALE" -q postgres >"$WORK/pgbench-init.log" 2>&1 \
    || { tail "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
log "initialised in $(( $(date +%s) - t )) s; database $(psql_at "$port" "SELECT pg_size_pretty(pg_database_size('postgres'))")"

log "backup"
walseal backup --fast --pg "host=127.0.0.1 port=$port user=postgres" --progress never 2>"$WORK/backup.log" \
    || { cat "$WORK/backup.log" >&2; die "backup failed"; }
log "$(tail -1 "$WORK/backup.log")"
log "pgbench for $LOAD_SECONDS s ($CLIENTS clients)"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -T "$LOAD_SECONDS" postgres >"$WORK/pgbench.log" 2>&1 \
    || { tail "$WORK/pgbench.log" >&2; die "pgbench failed"; }
seg=$(psql_at "$port" "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_at "$port" "SELECT pg_switch_wal()" >/dev/null
until [ "$(psql_at "$port" "SELECT coalesce(last_archived_wal, '') >= '$seg' FROM pg_stat_archiver")" = t ]; do sleep 1; done
counts=$(psql_at "$port" "SELECT string_agg(t || ' ' || n, ', ' ORDER BY t) FROM (SELECT 'pgbench_accounts' t, count(*) n FROM pgbench_accounts UNION ALL SELECT 'pgbench_history', count(*) FROM pgbench_history UNION ALL SELECT 'pgbench_tellers', count(*) FROM pgbench_tellers UNION ALL SELECT 'pgbench_branches', count(*) FROM pgbench_branches) c")
pg_stop "$PGDIR"
archived=$(find "$WORK/repo/wal" -type f | wc -l)
log "primary stopped; $archived WAL objects archived; drill"

out=$WORK/drill.out
set +e
/usr/bin/time -f 'drill wall %e s, peak RSS %M KiB' -o "$WORK/time.txt" \
    runuser -u "$PG_USER" -- env WALSEAL_REPO="$WALSEAL_REPO" WALSEAL_KEY_FILE="$WALSEAL_KEY_FILE" \
    "$WORK/bin/walseal" drill --dir "$WORK/drills" --pg-bin "$PG_BIN" >"$out" 2>"$WORK/drill.err"
rc=$?
set -e
report() {
    echo "# walseal drill on pgbench scale $SCALE, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
    echo "# PostgreSQL $version (full install), walseal $("$WORK/bin/walseal" --version), local repository"
    echo "# backup: $(tail -1 "$WORK/backup.log")"
    echo "# then pgbench -c $CLIENTS -T $LOAD_SECONDS: $(grep -E '^tps' "$WORK/pgbench.log" | head -1)"
    echo "# primary at the end: $counts"
    echo "# drill exit $rc; $(cat "$WORK/time.txt")"
    echo "# drill progress (stderr):"
    sed 's/^/#   /' "$WORK/drill.err"
    cat "$out"
}
report | tee "${RESULTS_FILE:-/dev/null}"
[ "$rc" = 0 ] || die "the drill failed (exit $rc)"
