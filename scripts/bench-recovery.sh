#!/usr/bin/env bash
# bench-recovery.sh - how long a real archive recovery takes with each restore_command: a
# PostgreSQL 15 base backup replays the same archived WAL segments, fetched by walseal (with
# and without prefetch), pgBackRest (async and sync) and plain cp.
#
# Method:
#   1. A throwaway cluster (temp dir, private socket, free port; fsync=off), pgbench -i -s SCALE,
#      a base backup (pg_basebackup -Fp -X none -c fast: its pg_wal is empty, so every WAL byte
#      that recovery replays comes through restore_command), then pgbench (CLIENTS clients) until
#      SEGMENTS segments were written after the backup; archive_command copies every segment to
#      a plain directory. The fingerprint (sum(pgbench_accounts.abalance),
#      count(pgbench_history)) is taken once pgbench stops, then pg_switch_wal() and the wait
#      until the last segment is archived; pgBackRest's stanza-create runs against this cluster.
#   2. Untimed, the archived segments from the backup's start segment on are stored into each
#      tool's repository: walseal (`walseal init`, then one wal-push per segment from a pg_wal
#      layout, file:// repository, lz4 + AES-256-GCM), pgBackRest (archive-push per segment,
#      posix repository, compress-type=lz4, repo1-cipher-type=aes-256-cbc, as peer-bench.sh),
#      cp (the plain directory itself).
#   3. Timed, REPS times, tools interleaved: the base backup copied to a fresh data directory,
#      recovery.signal, restore_command, no recovery target (replay to the end of the archive,
#      then promote), the same settings for every tool (shared_buffers=512MB, fsync=off,
#      max_wal_size=1GB, hot_standby=off, archive_mode=off); `sync`; pg_ctl start; the clock
#      stops once the server log says "database system is ready to accept connections" (polled
#      every 50 ms) and pg_is_in_recovery() is false. Then the fingerprint is compared with the
#      primary's.
#      Tools (TOOLS):
#        walseal         walseal wal-fetch %f %p (defaults: fetch_prefetch 8, a detached worker)
#        walseal-serial  the same with WALSEAL_FETCH_PREFETCH=0
#        pgbr-async      pgbackrest archive-get, archive-async=y, process-max=ASYNC_PROCESS_MAX, spool-path
#        pgbr-sync       pgbackrest archive-get
#        cp              cp ARCHIVE/%f %p (the floor: no decompression, no decryption)
#   cpu_s = CPU seconds of the recovering cluster and everything it started (a cpuacct/cgroup
#   v2 group around pg_ctl: the startup process's replay, restore_command, detached prefetch
#   and async workers, which are waited for), until the end of recovery; redo_cpu = the
#   startup process's own CPU for redo (PostgreSQL's "redo done ... system usage" line);
#   fetch_cpu = cpu_s - redo_cpu: what fetching cost (plus the few other server processes).
#   other_cpu = system-wide busy CPU minus cpu_s during the runs (another load disturbs the
#   wall times; should be near 0; its window includes the wait for a tool's detached workers,
#   about 2 s for walseal's prefetch worker). Without cgroup access these columns read n/a.
#   Page cache is not dropped (warm: the archive and the base are in memory on a machine with
#   enough RAM).
#
# Usage (as root):   bash scripts/bench-recovery.sh
#   SEGMENTS=16 REPS=1 bash scripts/bench-recovery.sh        # quick check (~2 min)
# Knobs: SEGMENTS (64), REPS (3), SCALE (50), CLIENTS (4), TOOLS ("walseal walseal-serial
#        pgbr-async pgbr-sync cp"), ASYNC_PROCESS_MAX (2), GEN_MAX_S (stop generating WAL after
#        this many seconds, 600), RECOVERY_TIMEOUT_S (one recovery, 1800), RESULTS_FILE (also
#        write the report there), BENCH_TMPDIR (/tmp), KEEP_TMP=1, WALSEAL_BIN (use this binary
#        instead of `cargo build --release`), PG_BIN (/usr/lib/postgresql/15/bin),
#        CPU_ACCOUNTING (auto | none).
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

SEGMENTS=${SEGMENTS:-64}
REPS=${REPS:-3}
SCALE=${SCALE:-50}
CLIENTS=${CLIENTS:-4}
TOOLS=${TOOLS:-"walseal walseal-serial pgbr-async pgbr-sync cp"}
ASYNC_PROCESS_MAX=${ASYNC_PROCESS_MAX:-2}
GEN_MAX_S=${GEN_MAX_S:-600}
RECOVERY_TIMEOUT_S=${RECOVERY_TIMEOUT_S:-1800}
KEEP_TMP=${KEEP_TMP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
CPU_ACCOUNTING=${CPU_ACCOUNTING:-auto}
bench_knobs SEGMENTS REPS SCALE CLIENTS ASYNC_PROCESS_MAX GEN_MAX_S RECOVERY_TIMEOUT_S
read -r -a TOOL_LIST <<< "$TOOLS"
[ "${#TOOL_LIST[@]}" -gt 0 ] || die "TOOLS is empty"
for t in "${TOOL_LIST[@]}"; do
    case $t in walseal | walseal-serial | pgbr-async | pgbr-sync | cp) ;; *) die "unknown tool '$t' in TOOLS" ;; esac
done
T_START=$SECONDS

# ---------------------------------------------------------------------------- setup
ensure_pg15
install_missing() {
    local pkgs=()
    command -v pgbackrest >/dev/null || pkgs+=(pgbackrest)
    [ -x /usr/bin/time ] || pkgs+=(time)
    command -v pgrep >/dev/null || pkgs+=(procps)
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    fi
}
install_missing

SRC_BIN=$(walseal_binary)

BENCH_TMPDIR=$(cd "$BENCH_TMPDIR" && pwd -P)
WORK=$(mktemp -d "$BENCH_TMPDIR/walseal-bench-recovery.XXXXXX")
chmod 755 "$WORK"
PRIMARY=$WORK/primary
BASE=$WORK/base
REPLAY=$WORK/replay
WALSRC=$WORK/walsrc          # what archive_command copied (also the cp tool's archive)
STAGE=$WORK/stage            # a data-directory layout (global/pg_control, pg_wal/) to push from
WREPO=$WORK/repo-walseal
PREPO=$WORK/repo-pgbr
SPOOL=$WORK/spool
KEY=$WORK/keys/master.key
BIN=$WORK/bin/walseal
RUNS=$WORK/runs              # tool rep wall_s cpu_s redo_cpu_s redo_elapsed_s verified other_cpu_s
CG_MODE=none CG_DIR=
PORT='' RPORT=''

cleanup() {
    local rc=$? pids i
    set +e
    pg_stop "$REPLAY"
    pg_stop "$PRIMARY"
    if [ "$rc" -ne 0 ]; then
        for f in "$PRIMARY.log" "$REPLAY.log"; do
            [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
        done
    fi
    # workers this run started (prefetch, pgBackRest async) carry $WORK on their command line
    for i in $(seq 1 100); do
        pids=$(pgrep -f -- "$WORK/" || true)
        [ -z "$pids" ] && break
        sleep 0.2
    done
    for i in $pids; do kill "$i" 2>/dev/null; done
    if [ -n "$CG_DIR" ]; then
        for i in $(seq 1 50); do
            [ -n "$(cat "$CG_DIR/cgroup.procs" 2>/dev/null)" ] || break
            sleep 0.1
        done
        rmdir "$CG_DIR" 2>/dev/null || log "could not remove cgroup $CG_DIR"
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

mkdir -p "$WORK/bin" "$WORK/keys" "$WALSRC" "$WREPO" "$PREPO" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/out"
install -m 755 "$SRC_BIN" "$BIN"
chown -R "$PG_USER:" "$WORK"
chmod 700 "$WORK/keys" "$WREPO" "$PREPO"
: > "$RUNS"
as_pg "$BIN" keygen -o "$KEY" >/dev/null 2>&1 || die "walseal keygen failed"
head -c 48 /dev/urandom | base64 -w0 > "$WORK/keys/pgbr-pass"
CIPHER_PASS=$(cat "$WORK/keys/pgbr-pass")

# CPU accounting: a throwaway cgroup around each recovering cluster
if [ "$CPU_ACCOUNTING" = auto ]; then
    if [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ] && mkdir "/sys/fs/cgroup/cpuacct/${WORK##*/}" 2>/dev/null; then
        CG_MODE=v1 CG_DIR=/sys/fs/cgroup/cpuacct/${WORK##*/}
    elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/${WORK##*/}" 2>/dev/null; then
        CG_MODE=v2 CG_DIR=/sys/fs/cgroup/${WORK##*/}
        [ -f "$CG_DIR/cpu.stat" ] || { rmdir "$CG_DIR"; CG_MODE=none CG_DIR=; }
    fi
fi
cg_ns() { # CPU nanoseconds of the cgroup so far
    local k v
    case $CG_MODE in
    v1) cat "$CG_DIR/cpuacct.usage" ;;
    v2) while read -r k v; do [ "$k" = usage_usec ] && { echo $((v * 1000)); return; }; done < "$CG_DIR/cpu.stat" ;;
    *) echo 0 ;;
    esac
}

# system-wide busy CPU, nanoseconds (user+nice+system+irq+softirq+steal)
HZ=$(getconf CLK_TCK)
sys_ns() {
    local u n s q sq st
    read -r _ u n s _ _ q sq st _ < /proc/stat
    echo $(( (u + n + s + q + sq + st) * 1000000000 / HZ ))
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# ---------------------------------------------------------------------------- primary + WAL
PORT=$(free_port)
log "work dir $WORK; primary on 127.0.0.1:$PORT (cpu accounting: $CG_MODE)"
pg_init "$PRIMARY" "$PORT"
pg_conf "$PRIMARY" \
    "# --- bench-recovery.sh" \
    "shared_buffers = 512MB" \
    "max_wal_size = 1GB" \
    "full_page_writes = on" \
    "fsync = off" \
    "synchronous_commit = off" \
    "archive_command = 'cp %p $WALSRC/%f.part && mv $WALSRC/%f.part $WALSRC/%f'"
pg_start "$PRIMARY"

log "pgbench -i -s $SCALE"
as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$WORK/out/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$WORK/out/pgbench-init.log" >&2; die "pgbench -i failed"; }
psql_at "$PORT" "CHECKPOINT" >/dev/null

log "pg_basebackup -Fp -X none -c fast"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$BASE" -Fp -X none -c fast \
    >"$WORK/out/basebackup.log" 2>&1 || { cat "$WORK/out/basebackup.log" >&2; die "pg_basebackup failed"; }
FIRST_SEG=$(sed -n 's/^START WAL LOCATION: .* (file \([0-9A-F]\{24\}\))$/\1/p' "$BASE/backup_label")
[ -n "$FIRST_SEG" ] || die "no START WAL LOCATION in $BASE/backup_label"
BASE_BYTES=$(du -sb "$BASE" | cut -f1)

START_LSN=$(psql_at "$PORT" "SELECT pg_current_wal_lsn()")
log "pgbench -c $CLIENTS until $SEGMENTS segments after the base backup (which starts in $FIRST_SEG) are written"
gen_t0=$SECONDS
while :; do
    produced=$(psql_at "$PORT" "SELECT floor(pg_wal_lsn_diff(pg_current_wal_lsn(), '$START_LSN') / 16777216)::int")
    [ "$produced" -ge "$SEGMENTS" ] && break
    if [ $((SECONDS - gen_t0)) -ge "$GEN_MAX_S" ]; then
        log "WARNING: only $produced segments after ${GEN_MAX_S}s of pgbench"
        break
    fi
    # short runs, so that the last one overshoots SEGMENTS by a few segments at most
    as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$CLIENTS" -j 2 -T 2 postgres \
        >>"$WORK/out/pgbench-run.log" 2>&1 || die "pgbench run failed"
done
GEN_S=$((SECONDS - gen_t0))
TPS=$(awk '/^tps/ { s += $3; n++ } END { printf "%.0f", n ? s / n : 0 }' "$WORK/out/pgbench-run.log")
FINGERPRINT_SQL="SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT count(*) FROM pgbench_history)"
FINGERPRINT=$(psql_at "$PORT" "$FINGERPRINT_SQL")
LAST_SEG=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")
log "fingerprint (sum(abalance) count(history)) = $FINGERPRINT; waiting until $LAST_SEG is archived"
t0=$SECONDS
until [ "$(psql_at "$PORT" "SELECT coalesce(last_archived_wal, '') COLLATE \"C\" >= '$LAST_SEG' FROM pg_stat_archiver")" = t ]; do
    [ $((SECONDS - t0)) -lt 600 ] || die "the archiver did not reach $LAST_SEG within 10 minutes"
    sleep 0.2
done

# pgBackRest: stanza-create against the running cluster
write_pgbr_conf() { # FILE PG1_PATH ASYNC(y|n)
    {
        echo "[global]"
        echo "repo1-type=posix"
        echo "repo1-path=$PREPO"
        echo "repo1-cipher-type=aes-256-cbc"
        echo "repo1-cipher-pass=$CIPHER_PASS"
        echo "compress-type=lz4"
        echo "log-path=$WORK/pgbr-log"
        echo "lock-path=$WORK/pgbr-lock"
        echo "spool-path=$SPOOL"
        if [ "$3" = y ]; then
            echo "archive-async=y"
            echo "process-max=$ASYNC_PROCESS_MAX"
        fi
        echo
        echo "[bench]"
        echo "pg1-path=$2"
        echo "pg1-port=$PORT"
        echo "pg1-socket-path=$PRIMARY.sock"
        echo "pg1-user=postgres"
    } > "$1"
    chmod 600 "$1"
    chown "$PG_USER:" "$1"
}
if printf '%s\n' "${TOOL_LIST[@]}" | grep -q '^pgbr-'; then
    write_pgbr_conf "$WORK/pgbr-stanza.conf" "$PRIMARY" n
    log "pgbackrest stanza-create"
    as_pg pgbackrest --config="$WORK/pgbr-stanza.conf" --stanza=bench stanza-create >"$WORK/out/stanza-create.log" 2>&1 \
        || { cat "$WORK/out/stanza-create.log" >&2; die "pgbackrest stanza-create failed"; }
fi
pg_stop "$PRIMARY"

# the segments recovery needs: from the backup's first one to the last archived (compared as
# strings: awk would compare 24-digit names as numbers, which doubles cannot tell apart)
find "$WALSRC" -maxdepth 1 -name '0*' ! -name '*.part' ! -name '*.*' -printf '%f\n' | sort \
    | awk -v s="$FIRST_SEG" '($0 "") >= (s "")' > "$WORK/seglist"
find "$WALSRC" -maxdepth 1 -name '0*' ! -name '*.part' ! -name '*.*' -printf '%f\n' \
    | awk -v s="$FIRST_SEG" '($0 "") < (s "")' | while read -r f; do rm -f "$WALSRC/$f"; done
N=$(wc -l < "$WORK/seglist")
[ "$N" -ge 2 ] || die "only $N WAL segments archived from $FIRST_SEG on"
WAL_BYTES=$(awk -v d="$WALSRC" '{ print d "/" $0 }' "$WORK/seglist" | xargs stat -c %s | awk '{ s += $1 } END { print s }')
log "$N segments from $(head -n 1 "$WORK/seglist") to $(tail -n 1 "$WORK/seglist") ($(mib "$WAL_BYTES") MiB), from ${GEN_S}s of pgbench at ~$TPS tps"

# ---------------------------------------------------------------------------- repositories (untimed)
has_tool() { printf '%s\n' "${TOOL_LIST[@]}" | grep -qx -- "$1"; }
mkdir -p "$STAGE/global" "$STAGE/pg_wal"
cp "$PRIMARY/global/pg_control" "$STAGE/global/"
cp "$PRIMARY/PG_VERSION" "$STAGE/"
while read -r f; do ln "$WALSRC/$f" "$STAGE/pg_wal/$f"; done < "$WORK/seglist"
chown -R "$PG_USER:" "$STAGE"
in_stage() { (cd "$STAGE" && runuser -u "$PG_USER" -- "$@"); }
STORED_WALSEAL='' STORED_PGBR=''
if has_tool walseal || has_tool walseal-serial; then
    log "walseal: init + wal-push of $N segments into $WREPO"
    as_pg env WALSEAL_REPO="file://$WREPO" WALSEAL_KEY_FILE="$KEY" "$BIN" init >/dev/null 2>&1 || die "walseal init failed"
    s0=$(dir_bytes "$WREPO")
    # no archive_status/ in the stage: one segment per call, no push-ahead
    while read -r f; do
        in_stage env WALSEAL_REPO="file://$WREPO" WALSEAL_KEY_FILE="$KEY" WALSEAL_PUSH_PARALLEL=1 "$BIN" wal-push "pg_wal/$f" \
            >>"$WORK/out/walseal-push.log" 2>&1 || { tail -n 5 "$WORK/out/walseal-push.log" >&2; die "walseal wal-push $f failed"; }
    done < "$WORK/seglist"
    STORED_WALSEAL=$(( $(dir_bytes "$WREPO") - s0 ))
fi
if has_tool pgbr-async || has_tool pgbr-sync; then
    log "pgBackRest: archive-push of $N segments into $PREPO"
    write_pgbr_conf "$WORK/pgbr-push.conf" "$STAGE" n
    s0=$(dir_bytes "$PREPO")
    while read -r f; do
        in_stage pgbackrest --config="$WORK/pgbr-push.conf" --stanza=bench archive-push "$STAGE/pg_wal/$f" \
            >>"$WORK/out/pgbr-push.log" 2>&1 || { tail -n 5 "$WORK/out/pgbr-push.log" >&2; die "pgbackrest archive-push $f failed"; }
    done < "$WORK/seglist"
    STORED_PGBR=$(( $(dir_bytes "$PREPO") - s0 ))
fi
rm -rf "$STAGE"
write_pgbr_conf "$WORK/pgbr-sync.conf" "$REPLAY" n
write_pgbr_conf "$WORK/pgbr-async.conf" "$REPLAY" y

restore_command() { # TOOL
    case $1 in
    walseal) echo "WALSEAL_REPO=file://$WREPO WALSEAL_KEY_FILE=$KEY $BIN wal-fetch %f %p" ;;
    walseal-serial) echo "WALSEAL_FETCH_PREFETCH=0 WALSEAL_REPO=file://$WREPO WALSEAL_KEY_FILE=$KEY $BIN wal-fetch %f %p" ;;
    pgbr-async) echo "pgbackrest --config=$WORK/pgbr-async.conf --stanza=bench archive-get %f \"%p\"" ;;
    pgbr-sync) echo "pgbackrest --config=$WORK/pgbr-sync.conf --stanza=bench archive-get %f \"%p\"" ;;
    cp) echo "cp $WALSRC/%f %p" ;;
    esac
}
# pgrep -f patterns of the detached workers a tool leaves behind (waited for before CPU is read)
worker_pattern() {
    case $1 in
    walseal | walseal-serial) echo "^$BIN wal-fetch " ;;
    pgbr-async) echo "config=$WORK/pgbr-async.conf .*:async" ;;
    *) echo '' ;;
    esac
}

# ---------------------------------------------------------------------------- timed recoveries
RPORT=$(free_port)
ms_now() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }

recover() { # TOOL REP
    local tool=$1 rep=$2 rc pat t0 t1 c0 c1 s0 s1 wall cpu other redo_cpu redo_el fp ok log_file i
    pg_stop "$REPLAY"
    rm -rf "$REPLAY" "$SPOOL" "$REPLAY.log"
    mkdir -p "$SPOOL"
    chown "$PG_USER:" "$SPOOL"
    as_pg cp -a "$BASE" "$REPLAY"
    rc=$(restore_command "$tool")
    # a fresh postgresql.auto.conf: the last word on every setting, the same for every tool
    {
        echo "# --- bench-recovery.sh ($tool)"
        echo "port = $RPORT"
        echo "unix_socket_directories = '$REPLAY.sock'"
        echo "shared_buffers = 512MB"
        echo "fsync = off"
        echo "max_wal_size = 1GB"
        echo "hot_standby = off"
        echo "archive_mode = off"
        echo "log_line_prefix = '%m [%p] '"
        echo "restore_command = '${rc//\'/\'\'}'"
    } > "$REPLAY/postgresql.auto.conf"
    : > "$REPLAY/recovery.signal"
    chown "$PG_USER:" "$REPLAY/postgresql.auto.conf" "$REPLAY/recovery.signal"
    _pg_side_files "$REPLAY"
    log_file=$REPLAY.log
    sync
    s0=$(sys_ns)
    c0=$(cg_ns)
    t0=$(ms_now)
    (
        if [ -n "$CG_DIR" ]; then echo "$BASHPID" > "$CG_DIR/cgroup.procs"; fi
        cd / && exec runuser -u "$PG_USER" -- "$PG_BIN/pg_ctl" -D "$REPLAY" -l "$log_file" -W start >/dev/null
    ) || die "$tool: pg_ctl start failed"
    while :; do
        if grep -q 'database system is ready to accept connections' "$log_file" 2>/dev/null \
            && [ "$(psql_at "$RPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; then
            break
        fi
        if [ $(( ($(ms_now) - t0) / 1000 )) -ge "$RECOVERY_TIMEOUT_S" ]; then
            die "$tool (repetition $rep): recovery did not end within $RECOVERY_TIMEOUT_S s (log: $log_file)"
        fi
        if grep -q 'FATAL\|PANIC' "$log_file" 2>/dev/null && ! [ -f "$REPLAY/postmaster.pid" ]; then
            die "$tool (repetition $rep): the server stopped during recovery"
        fi
        sleep 0.05
    done
    t1=$(ms_now)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
    pat=$(worker_pattern "$tool")
    if [ -n "$pat" ]; then
        for i in $(seq 1 600); do
            pgrep -f -- "$pat" >/dev/null || break
            sleep 0.05
        done
    fi
    c1=$(cg_ns)
    s1=$(sys_ns)
    if [ "$CG_MODE" = none ]; then
        cpu=n/a other=n/a
    else
        cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
        other=$(awk -v a="$s0" -v b="$s1" -v c="$cpu" 'BEGIN { o = (b - a) / 1e9 - c; printf "%.2f", (o > 0 ? o : 0) }')
    fi
    # "redo done at 0/... system usage: CPU: user: 3.10 s, system: 0.52 s, elapsed: 9.87 s"
    read -r redo_cpu redo_el < <(sed -n 's/.*redo done at .*CPU: user: \([0-9.]*\) s, system: \([0-9.]*\) s, elapsed: \([0-9.]*\) s.*/\1 \2 \3/p' "$log_file" \
        | awk 'NR == 1 { printf "%.2f %.2f\n", $1 + $2, $3 }') || true
    fp=$(psql_at "$RPORT" "$FINGERPRINT_SQL")
    ok=ok
    [ "$fp" = "$FINGERPRINT" ] || ok=MISMATCH
    cp "$log_file" "$WORK/out/$tool.$rep.log"
    printf '%s %s %s %s %s %s %s %s\n' "$tool" "$rep" "$wall" "$cpu" "${redo_cpu:-n/a}" "${redo_el:-n/a}" "$ok" "$other" >> "$RUNS"
    log "  $tool: recovered in $wall s (cpu $cpu s, redo cpu ${redo_cpu:-?} s, redo elapsed ${redo_el:-?} s, other load cpu $other s), fingerprint $ok"
    [ "$ok" = ok ] || { log "  fingerprint $fp, primary $FINGERPRINT"; die "$tool (repetition $rep): the recovered cluster differs from the primary"; }
    as_pg "$PG_BIN/pg_ctl" -D "$REPLAY" -m immediate -w stop >/dev/null 2>&1 || true
}

for rep in $(seq 1 "$REPS"); do
    log "repetition $rep/$REPS"
    for tool in "${TOOL_LIST[@]}"; do
        recover "$tool" "$rep"
    done
done
pg_stop "$REPLAY"

# ---------------------------------------------------------------------------- report
median() { # TOOL FIELD
    awk -v t="$1" -v f="$2" '$1 == t && $f != "n/a" { print $f }' "$RUNS" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
all_runs() { awk -v t="$1" '$1 == t { printf "%s%s", sep, $3; sep = " " }' "$RUNS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "n/a" && b != "n/a" && b > 0) printf "%.2f", a / b; else print "-" }'; }
REF_WALSEAL=n/a REF_CP=n/a
has_tool walseal && REF_WALSEAL=$(median walseal 3)
has_tool cp && REF_CP=$(median cp 3)
stored() {
    case $1 in
    walseal*) [ -n "$STORED_WALSEAL" ] && mib "$STORED_WALSEAL" || echo - ;;
    pgbr-*) [ -n "$STORED_PGBR" ] && mib "$STORED_PGBR" || echo - ;;
    cp) mib "$WAL_BYTES" ;;
    esac
}
REPORT=$WORK/report.txt
{
    echo "walseal recovery benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -m | awk '/^Mem:/ { print $2 }') MiB RAM, kernel $(uname -r)"
    echo "versions: $("$PG_BIN/postgres" --version); $("$BIN" --version); $(pgbackrest version 2>/dev/null || echo 'pgBackRest n/a')"
    echo "base backup: pg_basebackup -Fp -X none of a pgbench -i -s $SCALE cluster ($(mib "$BASE_BYTES") MiB)"
    echo "WAL replayed: $N segments ($(mib "$WAL_BYTES") MiB, $FIRST_SEG..$(tail -n 1 "$WORK/seglist")) written by ${GEN_S}s of pgbench -c $CLIENTS (~$TPS tps) after the backup"
    echo "method: recovery.signal + restore_command, no target (replay the whole archive, promote); shared_buffers=512MB,"
    echo "        fsync=off, max_wal_size=1GB, hot_standby=off; wall = pg_ctl start until 'ready to accept connections' and"
    echo "        pg_is_in_recovery() = f (50 ms polling); fingerprint (sum(abalance), count(pgbench_history)) checked each run;"
    echo "        $REPS repetition(s), tools interleaved, medians; sync before each start, page cache warm"
    if [ "$CG_MODE" = none ]; then
        echo "        cpu: no cgroup available (n/a)"
    else
        echo "        cpu_s = CPU of the recovering cluster and all it started (cgroup $CG_MODE, detached workers waited for);"
        echo "        redo_cpu = the startup process's redo CPU (PostgreSQL's 'redo done' line); fetch_cpu = cpu_s - redo_cpu"
    fi
    echo
    printf '%-15s %8s %8s %9s %7s %7s %8s %9s %10s %10s %6s %9s   %s\n' \
        tool wall_s ms/seg vs_walsl vs_cp cpu_s redo_cpu fetch_cpu redo_elap stored_MiB verify other_cpu 'all runs (s)'
    for tool in "${TOOL_LIST[@]}"; do
        w=$(median "$tool" 3) c=$(median "$tool" 4) r=$(median "$tool" 5) e=$(median "$tool" 6)
        fc=$(awk -v a="$c" -v b="$r" 'BEGIN { if (a != "n/a" && b != "n/a") printf "%.2f", a - b; else print "n/a" }')
        v=$(awk -v t="$tool" '$1 == t && $7 != "ok" { bad++ } END { print (bad ? "BAD" : "ok") }' "$RUNS")
        o=$(awk -v t="$tool" '$1 == t { if ($8 == "n/a") na = 1; else s += $8 } END { if (na) print "n/a"; else printf "%.1f", s }' "$RUNS")
        printf '%-15s %8s %8s %9s %7s %7s %8s %9s %10s %10s %6s %9s   %s\n' "$tool" "$w" \
            "$(awk -v w="$w" -v n="$N" 'BEGIN { printf "%.1f", w * 1000 / n }')" \
            "$(ratio "$w" "$REF_WALSEAL")" "$(ratio "$w" "$REF_CP")" "$c" "$r" "$fc" "$e" "$(stored "$tool")" "$v" "$o" "$(all_runs "$tool")"
    done
    echo "(vs_walsl, vs_cp: median wall time / walseal's, / cp's; ms/seg = wall / segments, replay included;"
    echo " wall includes the server start and the end-of-recovery checkpoint, and fetch_cpu that checkpoint's and the"
    echo " other server processes' CPU, the same for every tool: a tool's own fetch cost is about its fetch_cpu - cp's;"
    echo " other_cpu = CPU used on the host outside the recovering cluster during its runs, all repetitions: should be"
    echo " near 0 (the polling costs a little); if not, something else ran and the wall times are disturbed)"
    echo
    for tool in "${TOOL_LIST[@]}"; do
        printf '%-15s restore_command = %s\n' "$tool" "$(restore_command "$tool")"
    done
    echo "pgBackRest: repo1-type=posix, compress-type=lz4, repo1-cipher-type=aes-256-cbc; pgbr-async: archive-async=y, process-max=$ASYNC_PROCESS_MAX, spool-path"
    echo "walseal: file:// repository, lz4 + AES-256-GCM (defaults); walseal-serial: WALSEAL_FETCH_PREFETCH=0"
    echo
    echo "raw (tool rep wall_s cpu_s redo_cpu_s redo_elapsed_s verify other_cpu_s):"
    sed 's/^/  /' "$RUNS"
    echo
    echo "total run time: $((SECONDS - T_START)) s (WAL generation ${GEN_S} s)"
} > "$REPORT"
cat "$REPORT"
if [ -n "${RESULTS_FILE:-}" ]; then
    cp "$REPORT" "$RESULTS_FILE"
    log "report written to $RESULTS_FILE"
fi
