#!/usr/bin/env bash
# demo.sh - walseal end to end: archive a busy PostgreSQL 15 cluster into an encrypted
# local repository, restore a copy from a base backup + the archive, and check that the
# copy holds the same data while the repository holds no plaintext.
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

[ "$(id -u)" = 0 ] || die "run as root (the clusters run as the postgres OS user via runuser)"

# ---------------------------------------------------------------------------- setup
ensure_pg15

if [ -n "${WALSEAL_BIN:-}" ]; then
    SRC_BIN=$WALSEAL_BIN
else
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    say "Building walseal (cargo build --release)"
    (cd "$ROOT" && cargo build --release)
    SRC_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/walseal
fi
[ -x "$SRC_BIN" ] || die "no walseal binary at $SRC_BIN"

WORK=$(pg_tmpdir walseal-demo)
PRIMARY=$WORK/primary
RESTORED=$WORK/restored
REPO=$WORK/repo
KEY=$WORK/keys/master.key
BIN=$WORK/bin/walseal

cleanup() {
    local rc=$?
    set +e
    pg_stop "$RESTORED"
    pg_stop "$PRIMARY"
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

say "The master key"
as_pg "$BIN" keygen -o "$KEY"
note "walseal keygen wrote $KEY ($(stat -c '%A, owner %U' "$KEY"))."
note "Whoever holds this file can read the archive; keep a copy of it somewhere other than the archive."

# ---------------------------------------------------------------------------- primary
PORT1=$(free_port)
PUSH="WALSEAL_REPO=file://$REPO WALSEAL_KEY_FILE=$KEY $BIN wal-push %p"
FETCH="WALSEAL_REPO=file://$REPO WALSEAL_KEY_FILE=$KEY $BIN wal-fetch %f %p"

say "A PostgreSQL 15 primary on 127.0.0.1:$PORT1, archiving with walseal"
pg_init "$PRIMARY" "$PORT1"
pg_conf "$PRIMARY" "archive_command = '$PUSH'"
pg_start "$PRIMARY"
note "archive_command = '$PUSH'"
note "The repository is a plain directory here: $REPO"

say "Base backup (pg_basebackup -X none: the WAL it needs comes from the archive)"
mkdir -p "$RESTORED"
chown postgres: "$RESTORED"
chmod 700 "$RESTORED"
as_pg timeout 600 "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT1" -U postgres -D "$RESTORED" \
    -X none -c fast >"$WORK/basebackup.log" 2>&1 \
    || { cat "$WORK/basebackup.log" >&2; die "pg_basebackup failed"; }
note "pg_basebackup returned only once the backup's last WAL segment was archived, so walseal wal-push works."
note "Backup taken into $RESTORED ($(du -sh "$RESTORED" | cut -f1)); it is left untouched until the restore."

say "Traffic on the primary: pgbench -i -s $SCALE, then $SECONDS_LOAD s of pgbench with $CLIENTS clients"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -i -s "$SCALE" -q postgres >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT1" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_LOAD" postgres \
    >"$WORK/pgbench-run.log" 2>&1 || { cat "$WORK/pgbench-run.log" >&2; die "pgbench run failed"; }
note "$(grep -m1 'number of transactions actually processed' "$WORK/pgbench-run.log" || true)"
note "$(grep -m1 '^tps' "$WORK/pgbench-run.log" || true)"

CANARY="walseal-demo-canary-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
say "A row to look for later: '$CANARY'"
psql_at "$PORT1" "CREATE TABLE walseal_demo (id int PRIMARY KEY, note text NOT NULL)"
psql_at "$PORT1" "INSERT INTO walseal_demo VALUES (1, '$CANARY')"

SEG=$(psql_at "$PORT1" "SELECT pg_walfile_name(pg_switch_wal())")
say "pg_switch_wal(): segment $SEG is complete; waiting until it is archived"
archived_up_to_seg() {
    [ "$(psql_at "$PORT1" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$SEG' FROM pg_stat_archiver")" = t ]
}
wait_for 300 "segment $SEG to be archived (see $PRIMARY.log)" archived_up_to_seg
IFS='|' read -r ARCHIVED FAILED LAST < <(psql_at "$PORT1" "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver")
note "pg_stat_archiver: $ARCHIVED segments archived, $FAILED failed attempts, last $LAST"

# ---------------------------------------------------------------------------- repository
say "What the repository holds"
NFILES=$(find "$REPO" -type f | wc -l)
STORED=$(du -sb "$REPO" | cut -f1)
[ "$NFILES" -gt 0 ] || die "the repository $REPO is empty"
note "$NFILES files, $(awk -v b="$STORED" 'BEGIN { printf "%.1f", b / 1048576 }') MiB, for $ARCHIVED files archived by PostgreSQL (WAL segments are 16 MiB each)"
find "$REPO" -type f | sort | awk 'NR <= 3' | sed "s|^$REPO/|    e.g. |"
if grep -rqaF "$CANARY" "$REPO"; then
    die "the repository contains the plaintext string '$CANARY'"
fi
note "grep -r '$CANARY' $REPO: no match - the archive holds no plaintext."
inwal=$(grep -rlaF "$CANARY" "$PRIMARY/pg_wal" 2>/dev/null | wc -l || true)
if [ "$inwal" -gt 0 ]; then
    note "(For comparison, the same string is readable in $inwal of the primary's own WAL files in pg_wal.)"
fi

# ---------------------------------------------------------------------------- restore
PORT2=$(free_port)
say "Restore drill: start the base backup as a new cluster on 127.0.0.1:$PORT2, replaying WAL fetched by walseal"
pg_conf "$RESTORED" \
    "# --- walseal demo: restored copy" \
    "port = $PORT2" \
    "unix_socket_directories = '$RESTORED.sock'" \
    "archive_mode = off" \
    "restore_command = '$FETCH'" \
    "recovery_target_action = 'promote'"
: > "$RESTORED/recovery.signal"
chown postgres: "$RESTORED/recovery.signal"
note "restore_command = '$FETCH'"
note "recovery.signal is present, no primary_conninfo: everything comes from the archive."
note "(archive_mode is off on the copy so that it never writes into the primary's archive.)"
t0=$SECONDS
pg_start "$RESTORED"
not_in_recovery() { [ "$(psql_at "$PORT2" "SELECT pg_is_in_recovery()")" = f ]; }
wait_for 900 "the restored cluster to finish recovery (see $RESTORED.log)" not_in_recovery
NREST=$(grep -c 'restored log file' "$RESTORED.log" || true)
note "Recovery finished and the copy was promoted after $((SECONDS - t0)) s; $NREST files were restored from the archive."
note "$(grep -m1 'selected new timeline ID' "$RESTORED.log" | sed 's/^.*LOG: *//' || true)"

# ---------------------------------------------------------------------------- compare
fingerprint() {
    local port=$1
    psql_at "$port" "SELECT 'pgbench_accounts: ' || count(*) || ' rows, sum(abalance) ' || sum(abalance)
                            || ', md5 ' || md5(string_agg(aid || ':' || bid || ':' || abalance, ',' ORDER BY aid))
                     FROM pgbench_accounts"
    psql_at "$port" "SELECT 'pgbench_branches: sum(bbalance) ' || sum(bbalance) FROM pgbench_branches"
    psql_at "$port" "SELECT 'pgbench_tellers: sum(tbalance) ' || sum(tbalance) FROM pgbench_tellers"
    psql_at "$port" "SELECT 'pgbench_history: ' || count(*) || ' rows, sum(delta) ' || coalesce(sum(delta), 0)
                     FROM pgbench_history"
    psql_at "$port" "SELECT 'walseal_demo: ' || string_agg(id || '=' || note, ', ' ORDER BY id) FROM walseal_demo"
}
say "Comparing the primary with the restored copy"
FP1=$(fingerprint "$PORT1")
FP2=$(fingerprint "$PORT2")
printf '%s\n' "$FP1" | sed 's/^/    primary:  /'
printf '%s\n' "$FP2" | sed 's/^/    restored: /'
if [ "$FP1" != "$FP2" ]; then
    diff <(printf '%s\n' "$FP1") <(printf '%s\n' "$FP2") >&2 || true
    die "the restored cluster differs from the primary"
fi
grep -qF "$CANARY" <<< "$FP2" || die "the restored cluster lacks the row '$CANARY'"

echo
echo "demo OK: restored cluster matches the primary"
