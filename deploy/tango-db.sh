#!/usr/bin/env bash
# Embedded Tango database (pytango-db, sqlite) for tango-dqm: start | stop | status | restart | load.
#
#   deploy/tango-db.sh start        # PyDatabaseds on 127.0.0.1:${TANGO_PORT:-10000}
#   export TANGO_HOST=127.0.0.1:10000
#   deploy/tango-db.sh load config/demo.json   # json2tango -w -u, directories made absolute
#   deploy/tango-db.sh status       # exit 0 running, 3 stopped (LSB convention)
#   deploy/tango-db.sh stop
#
# load FILE: a relative OutputDirectory, ReferenceDirectory or ParameterFileDirectories value
# in FILE is resolved against FILE's folder (servers run in another working directory and
# refuse relative directories), then the file goes into the database at $TANGO_HOST (default
# this script's database) with json2tango --write --update. Plain json2tango loads paths as
# they are.
#
# Environment:
#   TANGO_PORT        port of the database server (default 10000)
#   DQM_STATE         state folder (default .dqm-state; a relative path is relative to the
#                     project folder). The database lives in $DQM_STATE/db/tango_database.db,
#                     with tango-db.pid and tango-db.log next to it.
#   TANGO_DB_TIMEOUT  seconds to wait for the database to answer (default 60)
#
# The database listens on 127.0.0.1 only. Executables come from the project's .venv/bin
# when it exists, else from PATH. For a facility MySQL/MariaDB database nothing here is
# needed: point TANGO_HOST at it and load the same dsconfig JSON (docs/operations.md).
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status|restart|load FILE" >&2
    exit 2
}

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${TANGO_PORT:-10000}"
HOST="127.0.0.1"
STATE="${DQM_STATE:-.dqm-state}"
case "$STATE" in
    /*) ;;
    *) STATE="$ROOT/$STATE" ;;
esac
DB_DIR="$STATE/db"
DB_FILE="$DB_DIR/tango_database.db"
PID_FILE="$DB_DIR/tango-db.pid"
PORT_FILE="$DB_DIR/tango-db.port"
LOG_FILE="$DB_DIR/tango-db.log"
TIMEOUT="${TANGO_DB_TIMEOUT:-60}"

if [[ ! "$PORT" =~ ^[0-9]+$ ]] || (( PORT < 1 || PORT > 65535 )); then
    echo "TANGO_PORT must be a port number, got '$PORT'" >&2
    exit 2
fi
if [[ ! "$TIMEOUT" =~ ^[0-9]+$ ]]; then
    echo "TANGO_DB_TIMEOUT must be a whole number of seconds, got '$TIMEOUT'" >&2
    exit 2
fi

if [[ -d "$ROOT/.venv/bin" ]]; then
    BIN="$ROOT/.venv/bin/"
else
    BIN=""
fi
DATABASEDS="${BIN}PyDatabaseds"
JSON2TANGO="${BIN}json2tango"
PYTHON="${BIN}python3"
if [[ -z "$BIN" ]]; then
    command -v PyDatabaseds >/dev/null 2>&1 || {
        echo "PyDatabaseds not found: install tango-dqm (pip install .) or run 'make install'" >&2
        exit 1
    }
fi

# True while the process exists and is not a zombie (an unreaped zombie has exited).
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [[ -n "$stat" && "$stat" != Z* ]]
}

# PID of our running database, or nothing. Only a process whose command line is
# PyDatabaseds counts: a stale PID file whose number was reused is ignored.
running_pid() {
    local pid args
    [[ -f "$PID_FILE" ]] || return 0
    pid="$(tr -cd '0-9' < "$PID_FILE")"
    [[ -n "$pid" ]] || return 0
    alive "$pid" || return 0
    args="$(ps -o args= -p "$pid" 2>/dev/null || true)"
    if [[ "$args" == *PyDatabaseds* ]]; then
        echo "$pid"
    fi
}

port_in_use() {
    # bash's /dev/tcp: succeeds when something accepts connections on the port
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

database_answers() {
    "$PYTHON" -c 'import sys, tango; tango.Database(sys.argv[1], int(sys.argv[2])).get_info()' \
        "$HOST" "$PORT" >/dev/null 2>&1
}

start() {
    local pid waited
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        echo "Tango database already running (pid $pid), data $DB_FILE; 'status' shows its port"
        return 0
    fi
    if port_in_use; then
        echo "port $PORT on $HOST is already in use: stop that server or choose another TANGO_PORT" >&2
        return 1
    fi
    mkdir -p -- "$DB_DIR"
    rm -f -- "$PID_FILE"
    echo "--- $(date '+%Y-%m-%d %H:%M:%S') starting PyDatabaseds on $HOST:$PORT" >> "$LOG_FILE"
    # Instance "2" is the usual name of the database server; the sqlite file is chosen by
    # PYTANGO_DATABASE_NAME. Detached from this shell: stdin from /dev/null, output to the log.
    (
        cd -- "$DB_DIR"
        PYTANGO_DATABASE_NAME="$DB_FILE" TANGO_HOST="$HOST:$PORT" \
            exec "$DATABASEDS" --host "$HOST" --port "$PORT" 2 < /dev/null >> "$LOG_FILE" 2>&1
    ) &
    pid="$!"
    echo "$pid" > "$PID_FILE"
    echo "$PORT" > "$PORT_FILE"
    waited=0
    until database_answers; do
        if ! alive "$pid"; then
            rm -f -- "$PID_FILE" "$PORT_FILE"
            echo "the Tango database exited during startup; last lines of $LOG_FILE:" >&2
            tail -n 20 -- "$LOG_FILE" >&2 || true
            return 1
        fi
        if (( waited >= TIMEOUT * 5 )); then
            echo "the Tango database did not answer within $TIMEOUT s (pid $pid); see $LOG_FILE" >&2
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    echo "Tango database running (pid $pid) on $HOST:$PORT, data $DB_FILE, log $LOG_FILE"
    echo "export TANGO_HOST=$HOST:$PORT"
}

stop() {
    local pid waited
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        rm -f -- "$PID_FILE" "$PORT_FILE"
        echo "Tango database not running"
        return 0
    fi
    kill -TERM "$pid"
    waited=0
    while alive "$pid"; do
        if (( waited >= 100 )); then  # 10 s
            echo "Tango database (pid $pid) ignored SIGTERM for 10 s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f -- "$PID_FILE" "$PORT_FILE"
    echo "Tango database stopped (pid $pid)"
}

status() {
    local pid port
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        port="$PORT"
        if [[ -f "$PORT_FILE" ]]; then
            port="$(tr -cd '0-9' < "$PORT_FILE")"
        fi
        echo "Tango database running (pid $pid) on $HOST:$port, data $DB_FILE"
        return 0
    fi
    echo "Tango database stopped (data $DB_FILE)"
    return 3
}

load() {
    local file="$1" resolved rc=0
    if [[ ! -f "$file" ]]; then
        echo "no such dsconfig file: $file" >&2
        return 2
    fi
    resolved="$(mktemp --suffix=.json)"
    if ! "$PYTHON" -m tango_dqm.devices.demo --resolve-config "$file" > "$resolved"; then
        rm -f -- "$resolved"
        return 1
    fi
    TANGO_HOST="${TANGO_HOST:-$HOST:$PORT}" "$JSON2TANGO" --write --update --no-colors "$resolved" || rc=$?
    rm -f -- "$resolved"
    # json2tango: 0 nothing to change, 2 changes applied, anything else failed
    if (( rc != 0 && rc != 2 )); then
        echo "json2tango failed ($rc) loading $file into ${TANGO_HOST:-$HOST:$PORT}" >&2
        return 1
    fi
    echo "loaded $file into ${TANGO_HOST:-$HOST:$PORT}"
}

case "${1:-}" in
    start|stop|status|restart) [[ $# -eq 1 ]] || usage ;;
    load) [[ $# -eq 2 ]] || usage ;;
    *) usage ;;
esac
case "$1" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop; start ;;
    load) load "$2" ;;
esac
