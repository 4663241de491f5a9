#!/usr/bin/env bash
# bench-backup.sh - base backup and restore speed: walseal backup / walseal restore against
# pg_basebackup, on one throwaway PostgreSQL 15 cluster filled by pgbench -i; then
# (INCREMENTAL=1) incremental backups on a PostgreSQL 18 one.
#
# Measured, REPS times each, interleaved (pg_basebackup, walseal backup, walseal restore in
# every repetition), wall time and peak RSS from /usr/bin/time -f '%e %M':
#   pg_basebackup   pg_basebackup -Ft -X none -c fast -D DIR: plain tar on local disk, no
#                   compression, no encryption (the reference)
#   walseal backup  walseal backup --fast into a file:// repository on the same disk
#                   (lz4 + AES-256-GCM; default --part-size)
#   walseal restore walseal restore ID NEWDIR (no target): decrypt, check the manifest, write
#                   (large files with O_DIRECT, the default)
#   walseal restore --buffered   the same through the page cache
# Both backups take an immediate checkpoint and return only once the WAL they need is
# archived; the cluster archives with walseal wal-push into the same repository.
# Then (INCREMENTAL=1, the default) incremental backups, once, on a PostgreSQL 18 cluster of
# the same scale (summarize_wal = on; the full 18.6 install, see lib.sh ensure_pg18_full):
#   walseal backup (full), pgbench for LOAD_SECONDS, walseal backup --incremental, a skewed
#   pgbench (a hot set) for LOAD_SECONDS, a second incremental; walseal restore of the full
#   backup, and of each incremental (its chain rebuilt, checked with pg_verifybackup -n).
# Every run is preceded by `sync`; the page cache is NOT dropped, so with enough RAM the
# cluster is read from cache (warm-cache numbers; the report says how much RAM there is).
#
# Usage (as root):   bash scripts/bench-backup.sh
#   SCALE=5 REPS=1 LOAD_SECONDS=10 bash scripts/bench-backup.sh   # quick check (~80 MB)
# Knobs: SCALE (pgbench scale, 200 = about 3 GiB), REPS (3), INCREMENTAL (1), LOAD_SECONDS
#        (each of the two pgbench runs before an incremental, 180), RESULTS_FILE (also write the
#        report there), BENCH_TMPDIR (where the cluster, backups and restores go, /tmp),
#        WALSEAL_BIN (use this binary instead of `cargo build --release`), KEEP_TMP=1.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SCALE=${SCALE:-200}
REPS=${REPS:-3}
INCREMENTAL=${INCREMENTAL:-1}
LOAD_SECONDS=${LOAD_SECONDS:-180}
case $LOAD_SECONDS in '' | *[!0-9]* | 0) die "LOAD_SECONDS must be a positive integer (got '$LOAD_SECONDS')" ;; esac
KEEP_TMP=${KEEP_TMP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
case $SCALE in '' | *[!0-9]* | 0) die "SCALE must be a positive integer (got '$SCALE')" ;; esac
case $REPS in '' | *[!0-9]* | 0) die "REPS must be a positive integer (got '$REPS')" ;; esac
if [ -n "${RESULTS_FILE:-}" ]; then
    case $RESULTS_FILE in /*) ;; *) RESULTS_FILE=$PWD/$RESULTS_FILE ;; esac
fi

[ "$(id -u)" = 0 ] || die "run as root (the cluster and the tools run as the postgres OS user via runuser)"

# ---------------------------------------------------------------------------- setup
ensure_pg15
if [ ! -x /usr/bin/time ]; then
    log "installing time (GNU /usr/bin/time) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q time >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; } \
        || die "apt-get install time failed"
fi

SRC_BIN=$(walseal_binary)

BENCH_TMPDIR=$(cd "$BENCH_TMPDIR" && pwd -P)
WORK=$(mktemp -d "$BENCH_TMPDIR/walseal-bench-backup.XXXXXX")
chmod 755 "$WORK"
chown "$PG_USER:" "$WORK"
PGDIR=$WORK/pg
REPO=$WORK/repo
KEY=$WORK/keys/master.key
BIN=$WORK/bin/walseal
RUNS=$WORK/runs              # one line per run: tool rep seconds peak_rss_kib
PORT=''

cleanup() {
    local rc=$?
    set +e
    pg_stop "$PGDIR"
    [ -z "${PG18DIR:-}" ] || PG_BIN=$PG18_BIN pg_stop "$PG18DIR"
    if [ "$rc" -ne 0 ]; then
        for f in "$PGDIR.log" "${PG18DIR:-$PGDIR}.log"; do
            [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
        done
    fi
    if [ "$KEEP_TMP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK" "$PGDIR.log" "$PGDIR.sock" "${PG18DIR:-$PGDIR}.log" "${PG18DIR:-$PGDIR}.sock"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/keys" "$REPO" "$WORK/out"
install -m 755 "$SRC_BIN" "$BIN"
chown "$PG_USER:" "$WORK/keys" "$REPO" "$WORK/out"
chmod 700 "$WORK/keys" "$REPO"
: > "$RUNS"
as_pg "$BIN" keygen -o "$KEY" >/dev/null 2>&1 || die "walseal keygen failed"

walseal() { as_pg env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" "$@"; }
walseal init >/dev/null 2>&1 || die "walseal init failed"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# timed TOOL REP CMD...: runs CMD as postgres under /usr/bin/time after a sync, appends
# "TOOL REP SECONDS PEAK_RSS_KIB" to $RUNS. CMD's stdout goes to $WORK/out/TOOL.REP.out,
# its stderr to $WORK/out/TOOL.REP.err.
timed() {
    local tool=$1 rep=$2 tf
    shift 2
    tf=$WORK/out/$tool.$rep.time
    sync
    as_pg /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$WORK/out/$tool.$rep.out" 2>"$WORK/out/$tool.$rep.err" \
        || { cat "$WORK/out/$tool.$rep.err" >&2; die "$tool (repetition $rep) failed: $*"; }
    # the last line: /usr/bin/time puts "Command exited with non-zero status" first on failure
    printf '%s %s %s\n' "$tool" "$rep" "$(tail -n 1 "$tf")" >> "$RUNS"
    log "  $tool: $(tail -n 1 "$tf" | awk '{ printf "%s s, peak RSS %.0f MiB", $1, $2 / 1024 }')"
}

# ---------------------------------------------------------------------------- cluster
PORT=$(free_port)
log "PostgreSQL 15 on 127.0.0.1:$PORT in $PGDIR, archiving with walseal wal-push into $REPO"
pg_init "$PGDIR" "$PORT"
pg_conf "$PGDIR" \
    "archive_command = 'WALSEAL_REPO=file://$REPO WALSEAL_KEY_FILE=$KEY $BIN wal-push %p'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB"
pg_start "$PGDIR"

log "pgbench -i -s $SCALE"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
psql_at "$PORT" "CHECKPOINT"
# pgbench -i wrote about as much WAL as data: let the archiver catch up first, so that no
# timed run waits for that backlog (both kinds of backup wait until their WAL is archived)
SEG=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")
log "waiting until the WAL written by pgbench -i (up to $SEG) is archived"
t0=$SECONDS
until [ "$(psql_at "$PORT" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$SEG' FROM pg_stat_archiver")" = t ]; do
    [ $((SECONDS - t0)) -lt 3600 ] || die "the archiver did not reach $SEG within an hour (see $PGDIR.log)"
    sleep 1
done
DB_BYTES=$(psql_at "$PORT" "SELECT pg_database_size('postgres')")
CLUSTER_BYTES=$(psql_at "$PORT" "SELECT sum(pg_database_size(datname))::bigint FROM pg_database")
log "pg_database_size('postgres') = $(mib "$DB_BYTES") MiB, all databases $(mib "$CLUSTER_BYTES") MiB"

# room for one pg_basebackup copy, one restored copy and the repository, with a margin
AVAIL=$(df -PB1 "$WORK" | awk 'NR == 2 { print $4 }')
NEED=$((CLUSTER_BYTES * 3))
[ "$AVAIL" -gt "$NEED" ] || die "$WORK has $(mib "$AVAIL") MiB free; this run needs about $(mib "$NEED") MiB"

# ---------------------------------------------------------------------------- runs
BB_BYTES='' WS_STORED='' RS_BYTES=''
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep/$REPS"

    dest=$WORK/pg_basebackup.$rep
    timed pg_basebackup "$rep" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres \
        -D "$dest" -Ft -X none -c fast
    bytes=$(du -sb "$dest" | cut -f1)
    [ -n "$BB_BYTES" ] || BB_BYTES=$bytes
    rm -rf "$dest"

    timed walseal-backup "$rep" env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        backup --fast --progress never --json --pg "host=127.0.0.1 port=$PORT user=postgres"
    rec=$WORK/out/walseal-backup.$rep.out
    id=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$rec")
    plain=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["size"])' "$rec")
    stored=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["stored"])' "$rec")
    [ -n "$WS_STORED" ] || WS_STORED=$stored
    log "  walseal-backup: $(tail -n 1 "$WORK/out/walseal-backup.$rep.err")"

    dest=$WORK/restored.$rep
    timed walseal-restore "$rep" env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        restore "$id" "$dest"
    bytes=$(du -sb "$dest" | cut -f1)
    [ -n "$RS_BYTES" ] || RS_BYTES=$bytes
    if [ "$rep" = 1 ]; then
        # once, untimed: the restored directory is the backup, file for file
        as_pg "$PG_BIN/pg_verifybackup" -n -q "$dest" || die "pg_verifybackup -n $dest failed"
        log "  pg_verifybackup -n: OK ($(mib "$plain") MiB in walseal's backup, $(mib "$bytes") MiB restored)"
    fi
    rm -rf "$dest"
    timed walseal-restore-buffered "$rep" env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        restore --buffered "$id" "$dest"
    rm -rf "$dest" "${REPO:?}/backups/$id"
done

# ---------------------------------------------------------------------------- incremental
# wait_archived PORT: switches WAL and waits until the archiver has stored that segment.
wait_archived() {
    local port=$1 seg t0=$SECONDS
    seg=$(psql_at "$port" "SELECT pg_walfile_name(pg_switch_wal())")
    until [ "$(psql_at "$port" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$seg' FROM pg_stat_archiver")" = t ]; do
        [ $((SECONDS - t0)) -lt 3600 ] || die "the archiver did not reach $seg within an hour"
        sleep 1
    done
}
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
INC_REPORT=''
if [ "$INCREMENTAL" = 1 ]; then
    pg_stop "$PGDIR"
    PG15_BIN=$PG_BIN
    PG18_BIN=$(ensure_pg18_full)
    PG_BIN=$PG18_BIN
    PG18DIR=$WORK/pg18
    REPO18=$WORK/repo18
    mkdir -p "$REPO18"
    chown "$PG_USER:" "$REPO18"
    chmod 700 "$REPO18"
    as_pg env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" init >/dev/null 2>&1 \
        || die "walseal init ($REPO18) failed"
    PORT18=$(free_port)
    log "incremental: PostgreSQL 18 on 127.0.0.1:$PORT18 in $PG18DIR, summarize_wal = on, archiving into $REPO18"
    pg_init "$PG18DIR" "$PORT18"
    pg_conf "$PG18DIR" \
        "archive_command = 'WALSEAL_REPO=file://$REPO18 WALSEAL_KEY_FILE=$KEY $BIN wal-push %p'" \
        "summarize_wal = on" \
        "shared_buffers = 256MB" \
        "max_wal_size = 4GB"
    pg_start "$PG18DIR"
    log "incremental: pgbench -i -s $SCALE"
    as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT18" -U postgres -i -s "$SCALE" -q postgres >"$WORK/pgbench18-init.log" 2>&1 \
        || { cat "$WORK/pgbench18-init.log" >&2; die "pgbench -i (18) failed"; }
    psql_at "$PORT18" "CHECKPOINT"
    wait_archived "$PORT18"
    timed inc-full 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        backup --fast --progress never --json --pg "host=127.0.0.1 port=$PORT18 user=postgres"
    FULL_ID=$(json_field "$WORK/out/inc-full.1.out" id)
    FULL_SIZE=$(json_field "$WORK/out/inc-full.1.out" size)
    FULL_STORED=$(json_field "$WORK/out/inc-full.1.out" stored)
    log "incremental: pgbench -c 4 -j 2 -T $LOAD_SECONDS"
    as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT18" -U postgres -c 4 -j 2 -T "$LOAD_SECONDS" postgres >"$WORK/pgbench18-run.log" 2>&1 \
        || { cat "$WORK/pgbench18-run.log" >&2; die "pgbench (18) failed"; }
    TPS=$(awk '/^tps/ { printf "%.0f", $3; exit }' "$WORK/pgbench18-run.log")
    wait_archived "$PORT18"
    timed inc-incremental 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        backup --fast --incremental --progress never --json --pg "host=127.0.0.1 port=$PORT18 user=postgres"
    INC_ID=$(json_field "$WORK/out/inc-incremental.1.out" id)
    INC_SIZE=$(json_field "$WORK/out/inc-incremental.1.out" size)
    INC_STORED=$(json_field "$WORK/out/inc-incremental.1.out" stored)
    # The built-in pgbench picks accounts uniformly, so minutes of it touch most pages; real
    # workloads have a hot set. A second incremental follows a skewed run (accounts drawn
    # with random_exponential, parameter 10: 90 % of updates in the first quarter of the table).
    cat > "$WORK/skewed.sql" <<'SQL'
\set aid random_exponential(1, 100000 * :scale, 10)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL
    chmod 644 "$WORK/skewed.sql"
    log "incremental: skewed pgbench -c 4 -j 2 -T $LOAD_SECONDS"
    as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT18" -U postgres -c 4 -j 2 -T "$LOAD_SECONDS" \
        -D scale="$SCALE" -f "$WORK/skewed.sql" postgres >"$WORK/pgbench18-skewed.log" 2>&1 \
        || { cat "$WORK/pgbench18-skewed.log" >&2; die "skewed pgbench (18) failed"; }
    TPS2=$(awk '/^tps/ { printf "%.0f", $3; exit }' "$WORK/pgbench18-skewed.log")
    wait_archived "$PORT18"
    timed inc-incremental2 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" \
        backup --fast --incremental --progress never --json --pg "host=127.0.0.1 port=$PORT18 user=postgres"
    INC2_ID=$(json_field "$WORK/out/inc-incremental2.1.out" id)
    INC2_SIZE=$(json_field "$WORK/out/inc-incremental2.1.out" size)
    INC2_STORED=$(json_field "$WORK/out/inc-incremental2.1.out" stored)
    pg_stop "$PG18DIR"
    dest=$WORK/restored18-full
    timed inc-restore-full 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" restore "$FULL_ID" "$dest"
    rm -rf "$dest"
    dest=$WORK/restored18-chain
    timed inc-restore-chain 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" restore "$INC_ID" "$dest"
    CHAIN_BYTES=$(du -sb "$dest" | cut -f1)
    as_pg "$PG_BIN/pg_verifybackup" -n -q -i postgresql.auto.conf -i recovery.signal "$dest" \
        || die "pg_verifybackup -n of the rebuilt chain in $dest failed"
    log "  pg_verifybackup -n of the rebuilt chain: OK"
    rm -rf "$dest"
    timed inc-restore-chain3 1 env WALSEAL_REPO="file://$REPO18" WALSEAL_KEY_FILE="$KEY" "$BIN" restore "$INC2_ID" "$dest"
    CHAIN3_BYTES=$(du -sb "$dest" | cut -f1)
    as_pg "$PG_BIN/pg_verifybackup" -n -q -i postgresql.auto.conf -i recovery.signal "$dest" \
        || die "pg_verifybackup -n of the rebuilt chain of 3 in $dest failed"
    rm -rf "$dest"
    secs() { awk -v t="$1" '$1 == t { print $3 }' "$RUNS"; }
    rss() { awk -v t="$1" '$1 == t { printf "%.0f", $4 / 1024 }' "$RUNS"; }
    INC_REPORT=$WORK/incremental.txt
    {
        echo "incremental backups ($("$PG_BIN/postgres" --version), one run each; summarize_wal = on; same scale)"
        echo "load before incremental 1: pgbench -c 4 -j 2 -T $LOAD_SECONDS ($TPS tps; accounts drawn uniformly)"
        echo "load before incremental 2: the same transaction, accounts drawn with random_exponential(..., 10), -T $LOAD_SECONDS ($TPS2 tps)"
        printf '%-30s %12s %12s %10s %12s\n' step 'data MiB' 'stored MiB' seconds 'peak RSS MiB'
        printf '%-30s %12s %12s %10s %12s\n' "full backup" "$(mib "$FULL_SIZE")" "$(mib "$FULL_STORED")" "$(secs inc-full)" "$(rss inc-full)"
        printf '%-30s %12s %12s %10s %12s\n' "incremental 1 (uniform load)" "$(mib "$INC_SIZE")" "$(mib "$INC_STORED")" "$(secs inc-incremental)" "$(rss inc-incremental)"
        printf '%-30s %12s %12s %10s %12s\n' "incremental 2 (skewed load)" "$(mib "$INC2_SIZE")" "$(mib "$INC2_STORED")" "$(secs inc-incremental2)" "$(rss inc-incremental2)"
        printf '%-30s %12s %12s %10s %12s\n' "restore of the full backup" "$(mib "$FULL_SIZE")" - "$(secs inc-restore-full)" "$(rss inc-restore-full)"
        printf '%-30s %12s %12s %10s %12s\n' "restore of full + incr 1" "$(mib "$CHAIN_BYTES")" - "$(secs inc-restore-chain)" "$(rss inc-restore-chain)"
        printf '%-30s %12s %12s %10s %12s\n' "restore of full + incr 1 + 2" "$(mib "$CHAIN3_BYTES")" - "$(secs inc-restore-chain3)" "$(rss inc-restore-chain3)"
        echo "incremental 1 / full: stored $(ratio "$INC_STORED" "$FULL_STORED"), time $(ratio "$(secs inc-incremental)" "$(secs inc-full)")"
        echo "incremental 2 / full: stored $(ratio "$INC2_STORED" "$FULL_STORED"), time $(ratio "$(secs inc-incremental2)" "$(secs inc-full)")"
        echo "chain restore / full restore: 2 backups $(ratio "$(secs inc-restore-chain)" "$(secs inc-restore-full)"), 3 backups $(ratio "$(secs inc-restore-chain3)" "$(secs inc-restore-full)")"
        echo "(each rebuilt chain passed pg_verifybackup -n; the restores ran after the cluster stopped)"
    } > "$INC_REPORT"
    PG_BIN=$PG15_BIN
fi

# ---------------------------------------------------------------------------- report
# median TOOL FIELD (3 = seconds, 4 = peak RSS KiB)
median() {
    awk -v t="$1" -v f="$2" '$1 == t { print $f }' "$RUNS" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
all_secs() { awk -v t="$1" '$1 == t { printf "%s%s", sep, $3; sep = " " }' "$RUNS"; }

# Every row's throughput is over the same bytes: what pg_basebackup wrote (base.tar and
# backup_manifest), i.e. the cluster as a base backup carries it.
T_BB=$(median pg_basebackup 3)
T_WB=$(median walseal-backup 3)
T_WR=$(median walseal-restore 3)
T_WRB=$(median walseal-restore-buffered 3)
row() {
    local tool=$1 secs=$2
    awk -v tool="$tool" -v b="$BB_BYTES" -v s="$secs" -v rss="$(median "$tool" 4)" -v all="$(all_secs "$tool")" \
        'BEGIN { printf "%-24s %10.1f %10.2f %10.1f %12.0f   %s\n", tool, b / 1048576, s, (s > 0 ? b / 1048576 / s : 0), rss / 1024, all }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

REPORT=$WORK/report.txt
{
    echo "walseal base backup benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "machine: $(nproc) CPUs, $(free -m | awk '/^Mem:/ { print $2 }') MiB RAM; disk: $(df -P "$WORK" | awk 'NR == 2 { print $1 }') for $BENCH_TMPDIR"
    echo "versions: $("$PG_BIN/postgres" --version), $("$BIN" --version)"
    echo "cluster: pgbench scale $SCALE; pg_database_size('postgres') = $(mib "$DB_BYTES") MiB ($DB_BYTES bytes), all databases $(mib "$CLUSTER_BYTES") MiB"
    echo "backup size: pg_basebackup wrote $(mib "$BB_BYTES") MiB; walseal stored $(mib "$WS_STORED") MiB (lz4 + AES-256-GCM); a restore writes $(mib "$RS_BYTES") MiB"
    echo "method: $REPS repetition(s), interleaved; sync before every run, page cache not dropped (warm cache);"
    echo "        wall time and peak RSS from /usr/bin/time; MiB/s = pg_basebackup's output size / median seconds"
    echo
    printf '%-24s %10s %10s %10s %12s   %s\n' tool 'data MiB' 'median s' 'MiB/s' 'peak RSS MiB' 'all runs (s)'
    row pg_basebackup "$T_BB"
    row walseal-backup "$T_WB"
    row walseal-restore "$T_WR"
    row walseal-restore-buffered "$T_WRB"
    echo
    echo "walseal backup / pg_basebackup throughput: $(ratio "$T_BB" "$T_WB")"
    echo "walseal restore / walseal backup throughput: $(ratio "$T_WB" "$T_WR")"
    echo "walseal restore --buffered / walseal backup throughput: $(ratio "$T_WB" "$T_WRB")"
    echo
    echo "pg_basebackup:   pg_basebackup -Ft -X none -c fast -D DIR (local disk, no compression)"
    echo "                 (-X none makes the server wait until the backup's WAL is archived, polling once a"
    echo "                 second: about 1 s of every run, which dominates only at small SCALE)"
    echo "walseal backup:  walseal backup --fast --progress never --json --pg 'host=127.0.0.1 port=P user=postgres' (file:// repository on the same disk)"
    echo "walseal restore: walseal restore ID NEWDIR (no target; files of 64 KiB and more written with O_DIRECT)"
    echo "walseal restore-buffered: walseal restore --buffered ID NEWDIR (through the page cache)"
    if [ -n "$INC_REPORT" ]; then
        echo
        cat "$INC_REPORT"
    fi
} > "$REPORT"
cat "$REPORT"
if [ -n "${RESULTS_FILE:-}" ]; then
    cp "$REPORT" "$RESULTS_FILE"
    log "report written to $RESULTS_FILE"
fi
