#!/usr/bin/env bash
# bench-compression.sh - ratio and per-segment cost of walseal's compression methods (lz4,
# zstd levels, none) on real WAL: the same segments pushed with `wal-push` (no push-ahead)
# and fetched back with `wal-fetch` (no prefetch), one process per segment, into a local
# repository. Cost is CPU time (task-clock of the walseal process and its threads, from
# `perf stat`), which a busy machine disturbs far less than wall time; wall medians are
# printed beside it.
#
# Usage (as root; the cluster runs as postgres):  bash scripts/bench-compression.sh
# Knobs: WALSEAL_BIN (default: build release), WAL_DIR (use these segments instead of
#        generating them), SEGMENTS (32), METHODS ("lz4 zstd:1 zstd:3 zstd:9 zstd:19 none"),
#        RESULTS_FILE (also write the table there).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SEGMENTS=${SEGMENTS:-32}
METHODS=${METHODS:-"lz4 zstd:1 zstd:3 zstd:9 zstd:19 none"}
BIN=$(walseal_binary)
ensure_pg15
TMP=$(mktemp -d /tmp/walseal-bench-compression.XXXXXX)
chmod 755 "$TMP"
trap 'as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT

if [ -z "${WAL_DIR:-}" ]; then
    WAL_DIR=$TMP/segs
    mkdir -p "$WAL_DIR" "$TMP/sock"
    chown -R postgres: "$TMP"
    as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=trust -N >/dev/null
    port=$(free_port)
    cat >> "$TMP/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$TMP/sock'
port = $port
shared_buffers = 512MB
max_wal_size = 1GB
fsync = off
synchronous_commit = off
archive_mode = on
archive_command = 'cp %p $WAL_DIR/%f'
EOF
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/pg.log" -w start >/dev/null
    log "pgbench -i -s 50, then load until $SEGMENTS segments are archived"
    as_pg "$PG_BIN/pgbench" -h "$TMP/sock" -p "$port" -i -s 50 -q postgres >/dev/null 2>&1
    as_pg "$PG_BIN/psql" -h "$TMP/sock" -p "$port" -qAtc checkpoint postgres >/dev/null
    first=$(as_pg "$PG_BIN/psql" -h "$TMP/sock" -p "$port" -qAtc "select pg_walfile_name(pg_current_wal_lsn())" postgres)
    after() { ls "$WAL_DIR" | grep -E '^[0-9A-F]{24}$' | sort | awk -v f="$first" '$0 > f'; }
    while [ "$(after | wc -l)" -lt "$SEGMENTS" ]; do
        as_pg "$PG_BIN/pgbench" -h "$TMP/sock" -p "$port" -n -c 4 -j 2 -T 5 postgres >/dev/null
    done
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m fast -w stop >/dev/null
    SEGS=$(after | head -n "$SEGMENTS")
else
    SEGS=$(ls "$WAL_DIR" | grep -E '^[0-9A-F]{24}$' | head -n "$SEGMENTS")
fi
n=$(echo "$SEGS" | wc -w)
"$BIN" keygen -o "$TMP/master.key" >/dev/null 2>&1
export WALSEAL_KEY_FILE=$TMP/master.key WALSEAL_PUSH_PARALLEL=1 WALSEAL_FETCH_PREFETCH=0

command -v perf >/dev/null || die "perf is needed (apt-get install linux-perf)"
# timed FILE CMD...: appends "cpu_ms wall_ms" of one run of CMD to FILE.
timed() {
    local out=$1; shift
    local t0 t1
    t0=$(date +%s%N)
    perf stat -x, -e task-clock -o "$TMP/perf.one" -- "$@"
    t1=$(date +%s%N)
    echo "$(awk -F, '/task-clock/ {print $1}' "$TMP/perf.one") $(( (t1 - t0) / 1000000 ))" >> "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
report=$TMP/report
{
    echo "# walseal compression methods on $n real WAL segments (pgbench scale 50, full_page_writes on), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); one process per segment; local repository in the page cache"
    echo "cpu = task-clock ms (perf stat: every thread) of one wal-push / wal-fetch, median; wall = median wall ms; push without push-ahead, fetch without prefetch"
    printf '%-9s %10s %7s %12s %12s %12s %12s\n' method stored_MiB ratio push_cpu_ms push_wall_ms fetch_cpu_ms fetch_wall_ms
} > "$report"
for m in $METHODS; do
    repo=$TMP/repo-${m/:/-}
    export WALSEAL_REPO=file://$repo WALSEAL_COMPRESSION=$m
    "$BIN" init >/dev/null 2>&1
    rm -rf "$TMP/pd"; mkdir -p "$TMP/pd/pg_wal/archive_status"
    : > "$TMP/push.t"; : > "$TMP/fetch.t"
    for s in $SEGS; do cp "$WAL_DIR/$s" "$TMP/pd/pg_wal/"; done
    sync
    for s in $SEGS; do
        timed "$TMP/push.t" "$BIN" wal-push "$TMP/pd/pg_wal/$s"
    done
    for s in $SEGS; do
        rm -f "$TMP/pd/pg_wal/RECOVERYXLOG"
        timed "$TMP/fetch.t" "$BIN" wal-fetch "$s" "$TMP/pd/pg_wal/RECOVERYXLOG"
        cmp -s "$TMP/pd/pg_wal/RECOVERYXLOG" "$WAL_DIR/$s" || die "$m: $s fetched back differs"
    done
    stored=$(du -sb "$repo/wal" | cut -f1)
    raw=$((n * 16777216))
    pc=$(awk '{print $1}' "$TMP/push.t" | median)
    pw=$(awk '{print $2}' "$TMP/push.t" | median)
    fc=$(awk '{print $1}' "$TMP/fetch.t" | median)
    fw=$(awk '{print $2}' "$TMP/fetch.t" | median)
    printf '%-9s %10.1f %7.2f %12.1f %12s %12.1f %12s\n' "$m" "$(echo "$stored/1048576" | bc -l)" "$(echo "$raw/$stored" | bc -l)" "$pc" "$pw" "$fc" "$fw" >> "$report"
done
echo "(medians over $n calls of each)" >> "$report"
cat "$report"
[ -z "${RESULTS_FILE:-}" ] || cp "$report" "$RESULTS_FILE"
