#!/usr/bin/env bash
# soak.sh - walseal under sustained load, everything at once, on a throwaway PostgreSQL 15:
#   - pgbench writes for SOAK_SECONDS while the primary archives with walseal wal-push
#     (archive_timeout 5 s, so segments keep coming);
#   - a base backup every BACKUP_EVERY seconds (walseal backup --fast);
#   - meanwhile, in a loop: walseal retain --keep-full 2, then walseal verify --quick;
#   - at the end: a restore point, then walseal restore latest --target-name to it, recovery
#     from the archive, and pgbench's tables compared with the primary's; a full verify.
# Fails on any failed archive attempt, backup, retain or verify, or any difference.
#
# Usage (as root):   bash scripts/soak.sh                  # two minutes (what test.sh runs)
#   SOAK_SECONDS=1800 BACKUP_EVERY=180 bash scripts/soak.sh   # a longer run by hand
# Knobs: SOAK_SECONDS (120), BACKUP_EVERY (30), SOAK_CLIENTS (4), SOAK_SCALE (10),
#        RESULTS_FILE (also write the summary there), WALSEAL_BIN (else `cargo build --release`),
#        KEEP_TMP=1.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SOAK_SECONDS=${SOAK_SECONDS:-120}
BACKUP_EVERY=${BACKUP_EVERY:-30}
CLIENTS=${SOAK_CLIENTS:-4}
SCALE=${SOAK_SCALE:-10}
KEEP_TMP=${KEEP_TMP:-0}
for v in SOAK_SECONDS BACKUP_EVERY CLIENTS SCALE; do
    case ${!v} in '' | *[!0-9]* | 0) die "$v must be a positive integer (got '${!v}')" ;; esac
done
if [ -n "${RESULTS_FILE:-}" ]; then
    case $RESULTS_FILE in /*) ;; *) RESULTS_FILE=$PWD/$RESULTS_FILE ;; esac
fi
[ "$(id -u)" = 0 ] || die "run as root (the clusters run as the postgres OS user via runuser)"

ensure_pg15
SRC_BIN=$(walseal_binary)
WORK=$(pg_tmpdir walseal-soak)
PRIMARY=$WORK/primary
RESTORED=$WORK/restored
REPO=$WORK/repo
KEY=$WORK/keys/master.key
BIN=$WORK/bin/walseal
STOP=$WORK/stop              # the background loops end when this file exists
PIDS=()

cleanup() {
    local rc=$?
    set +e
    touch "$STOP"
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    pg_stop "$RESTORED"
    pg_stop "$PRIMARY"
    if [ "$rc" -ne 0 ]; then
        for f in "$PRIMARY.log" "$RESTORED.log" "$WORK"/loop-*.log; do
            [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    if [ "$KEEP_TMP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK" "$PRIMARY.log" "$RESTORED.log"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/keys" "$REPO"
install -m 755 "$SRC_BIN" "$BIN"
chown postgres: "$WORK/keys" "$REPO"
chmod 700 "$WORK/keys" "$REPO"
walseal() { as_pg env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" "$@"; }
as_pg "$BIN" keygen -o "$KEY" >/dev/null 2>&1 || die "walseal keygen failed"
walseal init >/dev/null 2>&1 || die "walseal init failed"

PORT1=$(free_port)
pg_init "$PRIMARY" "$PORT1"
pg_conf "$PRIMARY" \
    "archive_command = 'WALSEAL_REPO=file://$REPO WALSEAL_KEY_FILE=$KEY $BIN wal-push %p'" \
    "archive_timeout = 5"
pg_start "$PRIMARY"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -i -s "$SCALE" -q postgres \
    >"$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
log "soak: pgbench $CLIENTS clients for ${SOAK_SECONDS}s on 127.0.0.1:$PORT1; a backup every ${BACKUP_EVERY}s; retain and verify --quick in a loop"

# loop NAME PAUSE CMD...: runs CMD (as walseal) until $STOP exists, PAUSE seconds apart; counts
# runs in $WORK/NAME.ok, failures in $WORK/NAME.failed (with the output in loop-NAME.log).
loop() {
    local name=$1 pause=$2
    shift 2
    : > "$WORK/$name.ok"
    : > "$WORK/$name.failed"
    until [ -e "$STOP" ]; do
        if walseal "$@" >>"$WORK/loop-$name.log" 2>&1; then
            echo . >> "$WORK/$name.ok"
        else
            echo "FAILED at $(date -u +%T): walseal $*" >> "$WORK/loop-$name.log"
            echo . >> "$WORK/$name.failed"
        fi
        local t=0
        while [ "$t" -lt "$pause" ] && [ ! -e "$STOP" ]; do sleep 1; t=$((t + 1)); done
    done
}
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -c "$CLIENTS" -j 2 -T "$SOAK_SECONDS" postgres \
    >"$WORK/pgbench-run.log" 2>&1 &
LOAD=$!
loop backup "$BACKUP_EVERY" backup --fast --progress never --pg "host=127.0.0.1 port=$PORT1 user=postgres" &
PIDS+=($!)
loop retain 5 retain --keep-full 2 &
PIDS+=($!)
loop verify 5 verify --quick &
PIDS+=($!)
status=0
wait "$LOAD" || status=$?
[ "$status" = 0 ] || { cat "$WORK/pgbench-run.log" >&2; die "pgbench failed"; }
touch "$STOP"
for p in "${PIDS[@]}"; do wait "$p"; done
PIDS=()
count() { wc -l < "$WORK/$1"; }
for n in backup retain verify; do
    [ "$(count "$n.failed")" = 0 ] || die "$n failed $(count "$n.failed") times (see loop-$n.log)"
done
[ "$(count backup.ok)" -ge 1 ] || die "no backup completed"

# ---------------------------------------------------------------------------- the end
# The load is over: the primary's tables at the restore point are what the copy must hold.
psql_at "$PORT1" "SELECT pg_create_restore_point('soak_end')" >/dev/null
SEG=$(psql_at "$PORT1" "SELECT pg_walfile_name(pg_switch_wal())")
t0=$SECONDS
until [ "$(psql_at "$PORT1" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$SEG' FROM pg_stat_archiver")" = t ]; do
    [ $((SECONDS - t0)) -lt 300 ] || die "segment $SEG was not archived within 300 s"
    sleep 0.5
done
IFS='|' read -r ARCHIVED FAILED < <(psql_at "$PORT1" "SELECT archived_count, failed_count FROM pg_stat_archiver")
[ "$FAILED" = 0 ] || die "archive_command failed $FAILED times (see $PRIMARY.log)"
walseal verify >"$WORK/verify-final.log" 2>&1 || { cat "$WORK/verify-final.log" >&2; die "the final verify failed"; }

walseal restore latest "$RESTORED" --target-name soak_end --target-action promote \
    >"$WORK/restore.out" 2>"$WORK/restore.err" || { cat "$WORK/restore.err" >&2; die "walseal restore failed"; }
PORT2=$(free_port)
pg_conf "$RESTORED" "port = $PORT2" "unix_socket_directories = '$RESTORED.sock'" "archive_mode = off"
pg_start "$RESTORED"
t0=$SECONDS
until [ "$(psql_at "$PORT2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; do
    [ $((SECONDS - t0)) -lt 600 ] || die "the restored copy did not reach soak_end and promote (see $RESTORED.log)"
    sleep 0.5
done
fingerprint() {
    psql_at "$1" "SELECT count(*) || ' ' || sum(abalance) || ' ' || md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"
    psql_at "$1" "SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history"
    psql_at "$1" "SELECT sum(bbalance) FROM pgbench_branches"
}
FP1=$(fingerprint "$PORT1")
FP2=$(fingerprint "$PORT2")
[ "$FP1" = "$FP2" ] || { diff <(echo "$FP1") <(echo "$FP2") >&2 || true; die "the restored copy differs from the primary"; }
TXNS=$(grep -m1 'number of transactions actually processed' "$WORK/pgbench-run.log" | awk -F': ' '{ print $2 }' || true)
KEPT=$(walseal list --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["backups"]))')
SUMMARY="soak OK: ${SOAK_SECONDS}s of pgbench ($TXNS transactions), $ARCHIVED WAL files archived, 0 failed; $(count backup.ok) backups, $(count retain.ok) retains (kept $KEPT backups), $(count verify.ok) verify --quick runs, all clean; PITR to the end matches the primary (pgbench_history $(echo "$FP1" | sed -n 2p | cut -d' ' -f1) rows)"
echo "$SUMMARY"
[ -z "${RESULTS_FILE:-}" ] || printf '%s\n%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores" "$SUMMARY" > "$RESULTS_FILE"
