#!/usr/bin/env bash
# bench-memory.sh - peak memory of walseal on large objects: a PostgreSQL 15 cluster made with
# `initdb --wal-segsize=1024` (1 GiB WAL segments), filled by pgbench -i until SEGMENTS full
# segments are in pg_wal, then, each under /usr/bin/time -f '%e %M' (wall seconds, peak RSS):
#   wal-push         each 1 GiB segment into a file:// repository (the first one REPS times,
#                    into a fresh repository each time)
#   wal-push again   the same segment once more (the re-push comparison streams the archived copy)
#   wal-fetch        the segment back (compared with cmp)
#   verify           the repository of SEGMENTS 1 GiB objects, default --jobs
#   rekey            to a new master key, default --jobs (spool files, staged replaces)
# (backup and restore memory: scripts/bench-backup.sh.)
# No memory limit is asserted: the report (and RESULTS_FILE) has the numbers.
#
# Usage (as root):   bash scripts/bench-memory.sh
#   SEGMENTS=2 REPS=1 bash scripts/bench-memory.sh     # quicker
# Knobs: SEGMENTS (3), SCALE (pgbench scale, 60 per segment by default), REPS (3),
#        RESULTS_FILE, BENCH_TMPDIR (/tmp), WALSEAL_BIN (else `cargo build --release`), KEEP_TMP=1.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SEGMENTS=${SEGMENTS:-3}
SCALE=${SCALE:-$((60 * SEGMENTS))}
REPS=${REPS:-3}
KEEP_TMP=${KEEP_TMP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
bench_knobs SEGMENTS SCALE REPS

ensure_pg15
[ -x /usr/bin/time ] || die "GNU time is missing (apt-get install time)"
SRC_BIN=$(walseal_binary)

BENCH_TMPDIR=$(cd "$BENCH_TMPDIR" && pwd -P)
WORK=$(mktemp -d "$BENCH_TMPDIR/walseal-bench-memory.XXXXXX")
chmod 755 "$WORK"
PGDIR=$WORK/pg
REPO=$WORK/repo
KEY=$WORK/keys/master.key
KEY2=$WORK/keys/new.key
BIN=$WORK/bin/walseal
RUNS=$WORK/runs
cleanup() {
    local rc=$?
    set +e
    pg_stop "$PGDIR"
    if [ "$KEEP_TMP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK" "$PGDIR.log" "$PGDIR.sock"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/keys" "$WORK/wal" "$WORK/out" "$WORK/fetched"
install -m 755 "$SRC_BIN" "$BIN"
chown "$PG_USER:" "$WORK" "$WORK/keys" "$WORK/wal" "$WORK/out" "$WORK/fetched"
chmod 700 "$WORK/keys"
: > "$RUNS"
as_pg "$BIN" keygen -o "$KEY" >/dev/null 2>&1 || die "walseal keygen failed"
as_pg "$BIN" keygen -o "$KEY2" >/dev/null 2>&1 || die "walseal keygen failed"

# timed NAME KEYS ARGS...: walseal ARGS as postgres (cwd $WORK) with the repository and KEYS,
# under /usr/bin/time; appends "NAME SECONDS KIB".
timed() {
    local name=$1 keys=$2 tf=$WORK/out/$1.time
    shift 2
    sync
    (cd "$WORK" && runuser -u "$PG_USER" -- /usr/bin/time -f '%e %M' -o "$tf" \
        env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$keys" "$BIN" "$@") \
        >"$WORK/out/$name.out" 2>"$WORK/out/$name.err" \
        || { cat "$WORK/out/$name.err" >&2; die "$name failed: $*"; }
    printf '%s %s\n' "$name" "$(tail -n 1 "$tf")" >> "$RUNS"
    log "  $name: $(tail -n 1 "$tf" | awk '{ printf "%s s, peak RSS %.0f MiB", $1, $2 / 1024 }')"
}

# ---------------------------------------------------------------------------- cluster
PORT=$(free_port)
log "PostgreSQL 15 with 1 GiB WAL segments on 127.0.0.1:$PORT in $PGDIR"
mkdir -p "$PGDIR" && chmod 700 "$PGDIR" && chown "$PG_USER:" "$PGDIR"
as_pg "$PG_BIN/initdb" -D "$PGDIR" -A trust -U postgres --wal-segsize=1024 --no-instructions \
    >"$PGDIR.log" 2>&1 || { cat "$PGDIR.log" >&2; die "initdb failed"; }
pg_conf "$PGDIR" "listen_addresses = '127.0.0.1'" "port = $PORT" "unix_socket_directories = ''" \
    "max_wal_size = 16GB" "min_wal_size = 2GB" "checkpoint_timeout = 1h" "shared_buffers = 256MB"
pg_start "$PGDIR"
log "pgbench -i -s $SCALE (until $SEGMENTS full segments are in pg_wal)"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres \
    >"$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
# then more rows until segment SEGMENTS is full (WAL starts in segment 1)
current() { psql_at "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())"; }
psql_at "$PORT" "CREATE TABLE filler (t text)"
while c=$(current) && [ $((16#${c:8:8} * 4 + 16#${c:16:8})) -le "$SEGMENTS" ]; do
    psql_at "$PORT" "INSERT INTO filler SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, 2000000)"
done
# segments 1..SEGMENTS (with 1 GiB segments, segment n is 0000000100000000000000 0n)
names=()
for i in $(seq 1 "$SEGMENTS"); do
    n=$(printf '00000001%08X%08X' $((i / 4)) $((i % 4)))
    names+=("$n")
    cp "$PGDIR/pg_wal/$n" "$WORK/wal/$n"
done
chown "$PG_USER:" "$WORK"/wal/*
pg_stop "$PGDIR"
log "segments ${names[*]} copied out ($(du -sh "$WORK/wal" | cut -f1))"

# ---------------------------------------------------------------------------- runs
first=${names[0]}
for rep in $(seq 1 "$REPS"); do
    rm -rf "$REPO"
    as_pg env WALSEAL_REPO="file://$REPO" WALSEAL_KEY_FILE="$KEY" "$BIN" init >/dev/null
    timed "wal-push.$rep" "$KEY" wal-push "wal/$first"
done
timed wal-push-again "$KEY" wal-push "wal/$first"
timed wal-fetch "$KEY" wal-fetch "$first" "fetched/$first"
cmp "$WORK/fetched/$first" "$WORK/wal/$first" || die "the fetched segment differs"
rm -f "$WORK/fetched/$first"
for n in "${names[@]:1}"; do
    timed "wal-push.$n" "$KEY" wal-push "wal/$n"
done
timed verify "$KEY" verify
timed rekey "$KEY2:$KEY" rekey
timed verify-after-rekey "$KEY2" verify

# ---------------------------------------------------------------------------- report
REPORT=$WORK/report.txt
median() {
    awk -v p="$1" 'index($1, p) == 1 { print $3 }' "$RUNS" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
{
    echo "walseal bench-memory, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB RAM"
    echo "walseal $("$BIN" --version 2>/dev/null | head -1), PostgreSQL 15, --wal-segsize=1024, pgbench -i -s $SCALE"
    echo "$SEGMENTS segments of 1 GiB; repository file:// on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }'); stored $(du -sh "$REPO/wal" | cut -f1)"
    echo
    printf '%-22s %12s %10s   %s\n' command "peak RSS MiB" seconds "(every run: seconds/KiB)"
    # rows: NAME REGEX (over the run names)
    for row in "wal-push ^wal-push\\.[0-9]+$" "wal-push-other ^wal-push\\.0" "wal-push-again ^wal-push-again$" \
        "wal-fetch ^wal-fetch$" "verify ^verify$" "rekey ^rekey$" "verify-after-rekey ^verify-after-rekey$"; do
        set -- $row
        sel=$(awk -v re="$2" '$1 ~ re { print $2, $3 }' "$RUNS")
        [ -n "$sel" ] || continue
        all=$(echo "$sel" | awk '{ printf "%s%s/%s", sep, $1, $2; sep = " " }')
        rss=$(echo "$sel" | awk '{ print $2 }' | sort -g | tail -1)
        secs=$(echo "$sel" | awk '{ print $1 }' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        printf '%-22s %12.1f %10s   %s\n' "$1" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$secs" "$all"
    done
    echo "(peak RSS: the highest of a row's runs; seconds: the median. wal-push: the first segment, $REPS times,"
    echo " each into a fresh repository; wal-push-other: the other segments, once each)"
} > "$REPORT"
cat "$REPORT"
[ -z "${RESULTS_FILE:-}" ] || cp "$REPORT" "$RESULTS_FILE"
