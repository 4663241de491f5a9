#!/usr/bin/env bash
# bench-backup.sh - base backup and restore speed: walseal backup / walseal restore against
# pg_basebackup, on one throwaway PostgreSQL 15 cluster filled by pgbench -i.
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
# Every run is preceded by `sync`; the page cache is NOT dropped, so with enough RAM the
# cluster is read from cache (warm-cache numbers; the report says how much RAM there is).
#
# Usage (as root):   bash scripts/bench-backup.sh
#   SCALE=5 REPS=1 bash scripts/bench-backup.sh        # quick check (~80 MB)
# Knobs: SCALE (pgbench scale, 200 = about 3 GiB), REPS (3), RESULTS_FILE (also write the
#        report there), BENCH_TMPDIR (where the cluster, backups and restores go, /tmp),
#        WALSEAL_BIN (use this binary instead of `cargo build --release`), KEEP_TMP=1.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SCALE=${SCALE:-200}
REPS=${REPS:-3}
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
    if [ "$rc" -ne 0 ] && [ -s "$PGDIR.log" ]; then
        echo "--- last lines of $PGDIR.log" >&2
        tail -n 25 "$PGDIR.log" >&2
    fi
    if [ "$KEEP_TMP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK" "$PGDIR.log" "$PGDIR.sock"
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
} > "$REPORT"
cat "$REPORT"
if [ -n "${RESULTS_FILE:-}" ]; then
    cp "$REPORT" "$RESULTS_FILE"
    log "report written to $RESULTS_FILE"
fi
