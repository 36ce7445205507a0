#!/usr/bin/env bash
# Local Kafka + PostgreSQL for Switchyard's dev loop and test suites.
#
#   infra.sh up       start both (concurrently) unless the caller supplied them
#   infra.sh down     stop the local ones
#   infra.sh status   exit 0 iff both answer
#   infra.sh env      print the export lines for the services:  eval "$(deploy/local/infra.sh env)"
#
# A service counts as supplied by the caller when KAFKA_BOOTSTRAP_SERVERS /
# DATABASE_URL is set to anything other than the local address these scripts
# serve, so `eval "$(infra.sh env)"` followed by `infra.sh up` still works.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_PORT=${KAFKA_PORT:-9092}
PGPORT=${PGPORT:-5432}
LOCAL_KAFKA=127.0.0.1:$KAFKA_PORT
LOCAL_DB=postgresql+psycopg://switchyard:switchyard@127.0.0.1:$PGPORT/switchyard

kafka_external() {
    case "${KAFKA_BOOTSTRAP_SERVERS:-}" in
        "" | "$LOCAL_KAFKA" | "localhost:$KAFKA_PORT") return 1 ;;
        *) return 0 ;;
    esac
}

db_external() {
    case "${DATABASE_URL:-}" in
        "" | "$LOCAL_DB" | "${LOCAL_DB/127.0.0.1/localhost}") return 1 ;;
        *) return 0 ;;
    esac
}

# Run a command with every output line prefixed, so concurrent output stays
# readable. pipefail (inherited) keeps the command's exit status.
prefixed() { # name command...
    local name=$1
    shift
    "$@" 2>&1 | sed -u "s/^/[$name] /"
}

cmd_up() {
    local kpid="" ppid="" rc=0
    if kafka_external; then
        echo "[kafka] KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS supplied by the caller; not starting a local broker"
    else
        prefixed kafka "$HERE/kafka.sh" up &
        kpid=$!
    fi
    if db_external; then
        echo "[postgres] DATABASE_URL supplied by the caller; not starting a local server"
    else
        prefixed postgres "$HERE/postgres.sh" up &
        ppid=$!
    fi
    if [ -n "$kpid" ]; then wait "$kpid" || rc=1; fi
    if [ -n "$ppid" ]; then wait "$ppid" || rc=1; fi
    [ "$rc" = 0 ] || { echo "infra up failed (see above)" >&2; return 1; }
    cmd_env
}

cmd_down() {
    if kafka_external; then
        echo "[kafka] supplied by the caller; left alone"
    else
        prefixed kafka "$HERE/kafka.sh" down
    fi
    if db_external; then
        echo "[postgres] supplied by the caller; left alone"
    else
        prefixed postgres "$HERE/postgres.sh" down
    fi
}

cmd_status() {
    local rc=0 first
    if kafka_external; then
        first=${KAFKA_BOOTSTRAP_SERVERS%%,*}
        first=${first#*://}
        if info=$(python3 "$HERE/kafka_probe.py" "$first" 5 2>&1); then
            echo "[kafka] external $first up ($info)"
        else
            echo "[kafka] external $first not answering ($info)"
            rc=1
        fi
    else
        prefixed kafka "$HERE/kafka.sh" status || rc=1
    fi
    if db_external; then
        # pg_isready takes a libpq URL: drop SQLAlchemy's "+driver" suffix.
        if pg_isready -q -t 5 -d "$(sed -E 's#^postgres(ql)?\+[A-Za-z0-9_]+://#postgresql://#' <<<"$DATABASE_URL")"; then
            echo "[postgres] external DATABASE_URL up"
        else
            echo "[postgres] external DATABASE_URL not answering"
            rc=1
        fi
    else
        prefixed postgres "$HERE/postgres.sh" status || rc=1
    fi
    return "$rc"
}

print_export() { # name value: plain when safe to eval as is, else shell-quoted
    if [[ $2 =~ ^[A-Za-z0-9_.,:/@+%=-]*$ ]]; then
        printf 'export %s=%s\n' "$1" "$2"
    else
        printf 'export %s=%q\n' "$1" "$2"
    fi
}

cmd_env() {
    print_export KAFKA_BOOTSTRAP_SERVERS "${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_KAFKA}"
    print_export DATABASE_URL "${DATABASE_URL:-$LOCAL_DB}"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 {up|down|status|env}" >&2; exit 2 ;;
esac
