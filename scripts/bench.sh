#!/usr/bin/env bash
# bench.sh - walseal in the WAL archive peer benchmark (shared/bench/peer-bench.sh):
# the same real WAL segments pushed and fetched by cp, pgBackRest and walseal, in one run.
#
# walseal takes part twice (peer-bench's two extra peers):
#   walseal         default settings: push-ahead 4 (push_parallel), prefetch 8 (fetch_prefetch);
#                   the detached prefetch worker is waited for (EXTRA_WAIT), so its CPU counts
#   walseal-serial  WALSEAL_PUSH_PARALLEL=1 WALSEAL_FETCH_PREFETCH=0: one segment per call,
#                   as walseal did before push-ahead and prefetch
# Each repetition's repository (%r) is made with `walseal init` before its push phase:
# untimed for walseal (SETUP_CMD, like pgBackRest's stanza copy); peer-bench has no setup hook
# for its second extra peer, so walseal-serial's push command runs `walseal init` itself when
# %r/walseal.repo does not exist yet, i.e. inside its first (timed) call (about 10 ms).
#
# Usage (as root):  bash scripts/bench.sh
#   SEGMENTS=16 REPS=1 SKIP_REFERENCE=1 bash scripts/bench.sh     # quick check
# Every knob of peer-bench.sh (SEGMENTS, REPS, SCALE, CLIENTS, KEEP_TMP, RESULTS_FILE,
# BENCH_TMPDIR, ...) is passed through from the environment; PEERS defaults to
# "cp pgbr-sync pgbr-async" here (set it to add naive-gpg naive-gpg-nz).
# Own knobs: WALSEAL_BIN (use this binary, no cargo build), PEER_BENCH (path of peer-bench.sh),
# WALSEAL_MODE: master (default: a master key pushes and fetches) or recipient (push-only:
# wal-push with WALSEAL_RECIPIENT and a signer only, wal-fetch with the identity trusting that
# signer).
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
        PG_USER=$BENCH_USER as_pg "$BIN" keygen -o "$KEY" >/dev/null 2>&1 || die "walseal keygen failed"
        PUSH_KEYS="WALSEAL_KEY_FILE=$KEY"
        FETCH_KEYS="WALSEAL_KEY_FILE=$KEY"
        ;;
    recipient)
        KEY=$KEYDIR/identity
        RECIPIENT=$(PG_USER=$BENCH_USER as_pg "$BIN" keygen --recipient -o "$KEY" 2>/dev/null) \
            || die "walseal keygen --recipient failed"
        # a push-only host signs what it seals; restore hosts trust that signer
        SIGNER_PUB=$(PG_USER=$BENCH_USER as_pg "$BIN" keygen --signer -o "$KEYDIR/signer" 2>/dev/null) \
            || die "walseal keygen --signer failed"
        PUSH_KEYS="WALSEAL_RECIPIENT=$RECIPIENT WALSEAL_SIGNER_FILE=$KEYDIR/signer"
        FETCH_KEYS="WALSEAL_IDENTITY_FILE=$KEY WALSEAL_TRUSTED_SIGNERS=$SIGNER_PUB"
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
    export EXTRA2_NAME=${EXTRA2_NAME:-walseal-push-only-serial}
else
    export EXTRA_NAME=${EXTRA_NAME:-walseal}
    export EXTRA2_NAME=${EXTRA2_NAME:-walseal-serial}
fi
export PEERS=${PEERS:-"cp pgbr-sync pgbr-async"}

# %r/walseal.repo is the record `walseal init` writes into a file:// repository (beside its
# plain copy walseal.repo.json); init happens in the push command only if it is missing.
SERIAL="WALSEAL_PUSH_PARALLEL=1 WALSEAL_FETCH_PREFETCH=0"
REPO_ENV="WALSEAL_REPO=file://%r"
INIT="[ -e %r/walseal.repo ] || $REPO_ENV $PUSH_KEYS $BIN init >/dev/null"
export SETUP_CMD="$REPO_ENV $PUSH_KEYS $BIN init >/dev/null"
export PUSH_CMD="$INIT; $REPO_ENV $PUSH_KEYS $BIN wal-push %p"
export FETCH_CMD="$REPO_ENV $FETCH_KEYS $BIN wal-fetch %f %p"
export PUSH_CMD2="$INIT; $SERIAL $REPO_ENV $PUSH_KEYS $BIN wal-push %p"
export FETCH_CMD2="$SERIAL $REPO_ENV $FETCH_KEYS $BIN wal-fetch %f %p"
# The prefetch worker is this binary started again with the same arguments (detached, its own
# process group), and outlives the last wal-fetch by about 2 s: peer-bench waits until no
# `$BIN wal-fetch ...` runs any more (pgrep -f, anchored at the start of the command line), so
# that its CPU is counted (the phase's cgroup holds it too).
export EXTRA_WAIT="^$BIN wal-fetch "
log "PEERS=$PEERS + $EXTRA_NAME + $EXTRA2_NAME"
log "SETUP_CMD=$SETUP_CMD"
log "PUSH_CMD=$PUSH_CMD"
log "FETCH_CMD=$FETCH_CMD"
log "PUSH_CMD2=$PUSH_CMD2"
log "FETCH_CMD2=$FETCH_CMD2"
log "EXTRA_WAIT=$EXTRA_WAIT"

status=0
bash "$PEER_BENCH" || status=$?
exit "$status"
