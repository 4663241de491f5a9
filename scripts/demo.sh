#!/usr/bin/env bash
# demo.sh - walseal end to end, the story a DBA cares about, on a throwaway PostgreSQL 15
# cluster and an encrypted repository in a local directory:
#
#   1. the primary archives its WAL with `walseal wal-push` while pgbench writes;
#   2. `walseal backup` takes a base backup over the replication protocol, under that load;
#   3. `walseal list` shows the backup and the archived WAL;
#   4. rows are written with known commit times, then a mistake: DROP TABLE important;
#   5. `walseal restore latest NEWDIR --target-time <just before the mistake>` rebuilds a data
#      directory, pg_verifybackup checks it, and a second server replays WAL from the archive
#      up to that time and is promoted;
#   6. the table is back, with every row committed before the target and none after it, and
#      pgbench's tables match the primary's;
#   7. the repository holds no plaintext (a string readable in the primary's files is not
#      found in it);
#   8. `walseal drill` restores the latest backup into a scratch directory, starts PostgreSQL
#      there (no network, no archiving), replays to the end of the archive, runs pg_amcheck and
#      counts the rows, and records the result: what cron runs weekly on a restore host.
#
# Usage (as root, on a fresh Debian 12 machine too):   bash scripts/demo.sh
# Knobs: DEMO_SCALE (pgbench scale, 10), DEMO_SECONDS (pgbench load, 20), DEMO_CLIENTS (4),
#        WALSEAL_BIN (use this binary instead of `cargo build --release`),
#        KEEP_TMP=1 (keep the temp dir with logs, repository and both clusters).
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SCALE=${DEMO_SCALE:-10}
SECONDS_LOAD=${DEMO_SECONDS:-20}
CLIENTS=${DEMO_CLIENTS:-4}
KEEP_TMP=${KEEP_TMP:-0}

say() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    /'; }

[ "$(id -u)" = 0 ] || die "run as root (the clusters run as the postgres OS user via runuser)"

# ---------------------------------------------------------------------------- setup
ensure_pg15

SRC_BIN=$(walseal_binary)

WORK=$(pg_tmpdir walseal-demo)      # owned by postgres: walseal restore creates RESTORED in it
PRIMARY=$WORK/primary
RESTORED=$WORK/restored
REPO=$WORK/repo
KEY=$WORK/keys/master.key
BIN=$WORK/bin/walseal
LOAD_PID=''

cleanup() {
    local rc=$?
    set +e
    pg_stop "$RESTORED"
    pg_stop "$PRIMARY"
    # a background pgbench ends when its server stops
    [ -z "$LOAD_PID" ] || wait "$LOAD_PID" 2>/dev/null
    if [ "$rc" -ne 0 ]; then
        for f in "$PRIMARY.log" "$RESTORED.log"; do
            [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
        done
    fi
    if [ "$KEEP_TMP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.5 s until it succeeds
wait_for() {
    local limit=$1 what=$2 t0=$SECONDS
    shift 2
    until "$@"; do
        [ $((SECONDS - t0)) -lt "$limit" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}

mkdir -p "$WORK/bin" "$WORK/keys" "$REPO"
install -m 755 "$SRC_BIN" "$BIN"
chown postgres: "$WORK/keys" "$REPO"
chmod 700 "$WORK/keys" "$REPO"

# walseal as postgres, on this repository and key (what archive_command and cron would run)
walseal() { as_pg env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" "$@"; }

say "The master key"
as_pg "$BIN" keygen -o "$KEY" 2>&1 | indent
note "walseal keygen wrote $KEY ($(stat -c '%A, owner %U' "$KEY"))."
note "Whoever holds this file can read the archive; keep a copy of it somewhere other than the archive."

say "The repository (walseal init: once, like pgBackRest's stanza-create)"
walseal init 2>&1 | indent
note "Every object written from now on is bound to this repository id; wal-push refuses a location that holds no repository."

# A string that is easy to find in plaintext: in the rows of the table `important`, so in the
# primary's data files, in its WAL, and (sealed) in the base backup and the archive.
CANARY="walseal-demo-canary-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

# ---------------------------------------------------------------------------- 1. archiving
PORT1=$(free_port)
PUSH="WALSEAL_REPO=file://$REPO WALSEAL_KEY_FILE=$KEY $BIN wal-push %p"

say "1. A PostgreSQL 15 primary on 127.0.0.1:$PORT1, archiving with walseal"
pg_init "$PRIMARY" "$PORT1"
pg_conf "$PRIMARY" \
    "archive_command = '$PUSH'" \
    "track_commit_timestamp = on"
pg_start "$PRIMARY"
note "archive_command = '$PUSH'"
note "The repository is a plain directory here: $REPO"
note "(track_commit_timestamp = on only so that this demo can print each row's commit time.)"

as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -i -s "$SCALE" -q postgres >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
psql_at "$PORT1" "CREATE TABLE important (id int PRIMARY KEY, note text NOT NULL)"
psql_at "$PORT1" "INSERT INTO important SELECT g, '$CANARY row ' || g FROM generate_series(1, 1000) g"
note "pgbench -i -s $SCALE: $(psql_at "$PORT1" "SELECT pg_size_pretty(pg_database_size('postgres'))") of data;"
note "table important: 1000 rows (ids 1-1000) whose notes contain '$CANARY'."

# ---------------------------------------------------------------------------- 2. base backup
say "2. Load: pgbench, $CLIENTS clients for $SECONDS_LOAD s; meanwhile, a base backup with walseal backup"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_LOAD" postgres \
    >"$WORK/pgbench-run.log" 2>&1 &
LOAD_PID=$!
sleep 1
note "\$ walseal backup --fast --pg 'host=127.0.0.1 port=$PORT1 user=postgres'   (as postgres)"
walseal backup --fast --progress never --pg "host=127.0.0.1 port=$PORT1 user=postgres" \
    >"$WORK/backup.out" 2>"$WORK/backup.err" \
    || { cat "$WORK/backup.err" >&2; die "walseal backup failed"; }
indent < "$WORK/backup.err"
if kill -0 "$LOAD_PID" 2>/dev/null; then
    note "The backup finished while pgbench was still writing."
else
    note "(pgbench had finished before the backup did: raise DEMO_SECONDS to overlap more.)"
fi
note "It returned only once the WAL it needs was in the archive: it is restorable on its own."
status=0
wait "$LOAD_PID" || status=$?
LOAD_PID=''
[ "$status" = 0 ] || { cat "$WORK/pgbench-run.log" >&2; die "pgbench run failed"; }
note "pgbench: $(grep -m1 'number of transactions actually processed' "$WORK/pgbench-run.log" | sed 's/^ *//' || true),"
note "         $(grep -m1 '^tps' "$WORK/pgbench-run.log" || true)"
IFS='|' read -r ARCHIVED FAILED LAST < <(psql_at "$PORT1" "SELECT archived_count, failed_count, coalesce(last_archived_wal, '-') FROM pg_stat_archiver")
note "pg_stat_archiver: $ARCHIVED files archived by walseal wal-push, $FAILED failed attempts, last $LAST"
[ "$FAILED" = 0 ] || die "archive_command failed $FAILED times (see $PRIMARY.log)"

# ---------------------------------------------------------------------------- 3. list
say "3. What the repository holds: walseal list"
walseal list 2>&1 | indent
NBACKUPS=$(walseal list --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["backups"]))')
[ "$NBACKUPS" = 1 ] || die "walseal list --json shows $NBACKUPS complete backups, expected 1"

# ---------------------------------------------------------------------------- 4. the mistake
say "4. Rows written after the backup, then a mistake"
# The load is over: from here on nothing writes to pgbench's tables, so the primary's
# pgbench tables are also what the restored copy must hold at the target time.
psql_at "$PORT1" "INSERT INTO important VALUES (1001, '$CANARY row 1001, after the backup')"
psql_at "$PORT1" "INSERT INTO important VALUES (1002, '$CANARY row 1002, the last good commit')"
sleep 0.5
TARGET=$(psql_at "$PORT1" "SELECT clock_timestamp()")
sleep 0.5
psql_at "$PORT1" "INSERT INTO important VALUES (1003, '$CANARY row 1003, after the target')"
psql_at "$PORT1" "SELECT id || ' committed at ' || pg_xact_commit_timestamp(xmin) FROM important WHERE id > 1000 ORDER BY id" \
    | indent
note "Target time, noted between the commits of 1002 and 1003: $TARGET"
sleep 0.5
psql_at "$PORT1" "DROP TABLE important"
note "Then the mistake, on the primary: DROP TABLE important"

SEG=$(psql_at "$PORT1" "SELECT pg_walfile_name(pg_switch_wal())")
archived_up_to_seg() {
    [ "$(psql_at "$PORT1" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$SEG' FROM pg_stat_archiver")" = t ]
}
wait_for 300 "segment $SEG to be archived (see $PRIMARY.log)" archived_up_to_seg
note "pg_switch_wal(): segment $SEG, which holds the mistake, is complete and archived."

# ---------------------------------------------------------------------------- 5. restore
PORT2=$(free_port)
say "5. Point-in-time restore to $TARGET"
note "\$ walseal restore latest $RESTORED --target-time '$TARGET' --target-action promote   (as postgres)"
walseal restore latest "$RESTORED" --target-time "$TARGET" --target-action promote \
    >"$WORK/restore.out" 2>"$WORK/restore.err" \
    || { cat "$WORK/restore.err" >&2; die "walseal restore failed"; }
indent < "$WORK/restore.err"
note "What it added to postgresql.auto.conf:"
sed -n '/^# Added by walseal restore/,$p' "$RESTORED/postgresql.auto.conf" | indent
[ -f "$RESTORED/recovery.signal" ] || die "walseal restore wrote no recovery.signal"

# before any edit to postgresql.conf, which the manifest covers
as_pg "$PG_BIN/pg_verifybackup" -n "$RESTORED" 2>&1 | indent
note "(pg_verifybackup -n: every file matches the backup manifest; the WAL comes from the archive.)"

pg_conf "$RESTORED" \
    "# --- walseal demo: restored copy" \
    "port = $PORT2" \
    "unix_socket_directories = '$RESTORED.sock'" \
    "archive_mode = off"
note "Starting it on 127.0.0.1:$PORT2 with archive_mode = off (so that it never writes into the primary's archive)."
t0=$SECONDS
pg_start "$RESTORED"
not_in_recovery() { [ "$(psql_at "$PORT2" "SELECT pg_is_in_recovery()")" = f ]; }
wait_for 900 "the restored cluster to reach the target and promote (see $RESTORED.log)" not_in_recovery
NREST=$(grep -c 'restored log file' "$RESTORED.log" || true)
note "Recovery reached the target and the copy was promoted after $((SECONDS - t0)) s; $NREST files came from the archive (walseal wal-fetch)."
grep -E 'recovery stopping|selected new timeline ID' "$RESTORED.log" | sed 's/^.*LOG: *//' | indent || true

# ---------------------------------------------------------------------------- 6. the data
say "6. The data on the restored copy"
[ "$(psql_at "$PORT1" "SELECT to_regclass('important') IS NULL")" = t ] || die "the table important still exists on the primary"
note "primary:  table important does not exist (dropped)"
RESTORED_ROWS=$(psql_at "$PORT2" "SELECT count(*) || ' rows, ids ' || min(id) || '-' || max(id) FROM important")
note "restored: table important is back: $RESTORED_ROWS"
psql_at "$PORT2" "SELECT id || ' committed at ' || coalesce(pg_xact_commit_timestamp(xmin)::text, '?') || ': ' || note FROM important WHERE id > 1000 ORDER BY id" \
    | indent
[ "$RESTORED_ROWS" = "1002 rows, ids 1-1002" ] \
    || die "expected rows 1-1002 (everything committed before the target) on the restored copy, got: $RESTORED_ROWS"
[ "$(psql_at "$PORT2" "SELECT count(*) FROM important WHERE id = 1003")" = 0 ] \
    || die "row 1003, committed after the target, is on the restored copy"
note "Rows 1001 and 1002 (before the target) are there, row 1003 (after it) is not."

fingerprint() {
    local port=$1
    psql_at "$port" "SELECT 'pgbench_accounts: ' || count(*) || ' rows, sum(abalance) ' || sum(abalance)
                            || ', md5 ' || md5(string_agg(aid || ':' || bid || ':' || abalance, ',' ORDER BY aid))
                     FROM pgbench_accounts"
    psql_at "$port" "SELECT 'pgbench_branches: sum(bbalance) ' || sum(bbalance) FROM pgbench_branches"
    psql_at "$port" "SELECT 'pgbench_tellers: sum(tbalance) ' || sum(tbalance) FROM pgbench_tellers"
    psql_at "$port" "SELECT 'pgbench_history: ' || count(*) || ' rows, sum(delta) ' || coalesce(sum(delta), 0)
                     FROM pgbench_history"
}
note "pgbench's tables (the load ended before the target, so the primary's are the expected ones):"
FP1=$(fingerprint "$PORT1")
FP2=$(fingerprint "$PORT2")
printf '%s\n' "$FP1" | sed 's/^/      primary:  /'
printf '%s\n' "$FP2" | sed 's/^/      restored: /'
if [ "$FP1" != "$FP2" ]; then
    diff <(printf '%s\n' "$FP1") <(printf '%s\n' "$FP2") >&2 || true
    die "pgbench's tables on the restored copy differ from the primary's"
fi
note "Identical: every transaction pgbench committed during and after the backup was replayed."

# ---------------------------------------------------------------------------- 7. plaintext
say "7. No plaintext in the repository"
NFILES=$(find "$REPO" -type f | wc -l)
STORED=$(du -sb "$REPO" | cut -f1)
ARCHIVED=$(psql_at "$PORT1" "SELECT archived_count FROM pg_stat_archiver")
note "$NFILES files, $(awk -v b="$STORED" 'BEGIN { printf "%.1f", b / 1048576 }') MiB: the base backup and the $ARCHIVED WAL files archived so far, compressed and sealed."
# The rows 1-1000 were in the backup (so in the restored copy's data files); every row is in WAL.
INWAL=$(grep -rlaF "$CANARY" "$PRIMARY/pg_wal" 2>/dev/null | wc -l || true)
INBASE=$(grep -rlaF "$CANARY" "$RESTORED/base" 2>/dev/null | wc -l || true)
note "grep -r '$CANARY': found in $INWAL WAL files in the primary's pg_wal and $INBASE data files in the restored copy's base/"
[ "$INWAL" -gt 0 ] && [ "$INBASE" -gt 0 ] \
    || die "the string is missing from the primary's WAL or the restored data files: the check below would prove nothing"
if grep -rqaF "$CANARY" "$REPO"; then
    die "the repository contains the plaintext string '$CANARY'"
fi
note "grep -r '$CANARY' $REPO: no match - neither the base backup nor the archived WAL holds plaintext."

# ---------------------------------------------------------------------------- 8. drill
say "8. A restore drill: walseal drill (what cron runs weekly on a restore host)"
mkdir -p "$WORK/drills"
chown "$PG_USER:" "$WORK/drills"
walseal drill --dir "$WORK/drills" 2>&1 | sed 's/^/      /' \
    || die "the restore drill failed"
note "walseal status now reports the last drill (walseal_last_drill_success for monitoring):"
walseal status | grep "last drill" | sed 's/^/      /'

echo
echo "demo OK: backup under load, point-in-time restore to just before DROP TABLE brought back rows 1-1002 (not 1003), pgbench data matches, no plaintext in the repository, a restore drill passed"
