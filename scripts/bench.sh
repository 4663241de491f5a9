#!/usr/bin/env bash
# bench.sh - walseal in the WAL archive peer benchmark (shared/bench/peer-bench.sh):
# the same real WAL segments pushed and fetched by cp, pgBackRest, gpg pipelines and walseal.
#
# Usage (as root):  bash scripts/bench.sh
#   SEGMENTS=16 REPS=1 SKIP_REFERENCE=1 bash scripts/bench.sh     # quick check
# Every knob of peer-bench.sh (SEGMENTS, REPS, SCALE, CLIENTS, PEERS, KEEP_TMP,
# RESULTS_FILE, BENCH_TMPDIR, ...) is passed through from the environment.
# Own knobs: WALSEAL_BIN (use this binary, no cargo build), PEER_BENCH (path of peer-bench.sh),
# WALSEAL_MODE: master (default: a master key pushes and fetches) or recipient (push-only:
# wal-push with WALSEAL_RECIPIENT only, wal-fetch with the identity).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (installs /usr/local/bin/walseal; the benchmark runs as postgres)"

if [ -z "${PEER_BENCH:-}" ]; then
    for c in "$ROOT/../shared/bench/peer-bench.sh" /work/shared/bench/peer-bench.sh; do
        if [ -f "$c" ]; then PEER_BENCH=$c; break; fi
    done
fi
[ -f "${PEER_BENCH:-}" ] || die "peer-bench.sh not found (set PEER_BENCH)"

SRC_BIN=$(walseal_binary)
BIN=/usr/local/bin/walseal
install -m 755 "$SRC_BIN" "$BIN"
log "installed $BIN"

# peer-bench.sh runs the commands as postgres (BENCH_USER), so the key must be theirs
BENCH_USER=${BENCH_USER:-postgres}
ensure_pg15      # peer-bench.sh needs it too; the postgresql packages create the postgres user
id "$BENCH_USER" >/dev/null 2>&1 || die "OS user $BENCH_USER does not exist"
KEYDIR=$(mktemp -d /tmp/walseal-bench-key.XXXXXX)
trap 'rm -rf "$KEYDIR"' EXIT
chown "$BENCH_USER:" "$KEYDIR"
chmod 700 "$KEYDIR"
WALSEAL_MODE=${WALSEAL_MODE:-master}
case $WALSEAL_MODE in
    master)
        KEY=$KEYDIR/master.key
        PG_USER=$BENCH_USER as_pg "$BIN" keygen -o "$KEY"
        PUSH_KEYS="WALSEAL_KEY_FILE=$KEY"
        FETCH_KEYS="WALSEAL_KEY_FILE=$KEY"
        ;;
    recipient)
        KEY=$KEYDIR/identity
        RECIPIENT=$(PG_USER=$BENCH_USER as_pg "$BIN" keygen --recipient -o "$KEY" 2>/dev/null)
        PUSH_KEYS="WALSEAL_RECIPIENT=$RECIPIENT"
        FETCH_KEYS="WALSEAL_IDENTITY_FILE=$KEY"
        ;;
    *) die "WALSEAL_MODE must be master or recipient (got '$WALSEAL_MODE')" ;;
esac
[ "$(stat -c '%U %a' "$KEY")" = "$BENCH_USER 600" ] || die "unexpected key file owner/mode: $(stat -c '%U %a' "$KEY")"

# %r is "$TMP/run/repo" with TMP=$(mktemp -d "$BENCH_TMPDIR/peer-bench.XXXXXX"): absolute
# exactly when BENCH_TMPDIR is, and file:// needs an absolute path.
BENCH_TMPDIR=$(cd "${BENCH_TMPDIR:-/tmp}" && pwd -P)
export BENCH_TMPDIR BENCH_USER

if [ "$WALSEAL_MODE" = recipient ]; then
    export EXTRA_NAME=${EXTRA_NAME:-walseal-push-only}
else
    export EXTRA_NAME=${EXTRA_NAME:-walseal}
fi
export PUSH_CMD="WALSEAL_REPO=file://%r $PUSH_KEYS $BIN wal-push %p"
export FETCH_CMD="WALSEAL_REPO=file://%r $FETCH_KEYS $BIN wal-fetch %f %p"
log "PUSH_CMD=$PUSH_CMD"
log "FETCH_CMD=$FETCH_CMD"

status=0
bash "$PEER_BENCH" || status=$?
exit "$status"
