#!/usr/bin/env bash
# Local PostgreSQL server from Debian's packages (the machine-wide "main"
# cluster of the newest installed major version), plus the switchyard role and
# database.
#
#   postgres.sh up       install (once), create cluster (once), start, wait, create role+db
#   postgres.sh down     stop the cluster (safe when not running)
#   postgres.sh status   exit 0 iff pg_isready succeeds on 127.0.0.1:$PGPORT
#
# See README.md beside this file for the environment variables.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGPORT=${PGPORT:-5432}
PG_START_TIMEOUT=${PG_START_TIMEOUT:-60}
DB_USER=switchyard
DB_PASSWORD=switchyard
DB_NAME=switchyard
LOCAL_URL=postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PGPORT/$DB_NAME

# Newest installed major version with a server binary, or empty.
pg_version() {
    local d
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [ -x "$d" ] && basename "$(dirname "$(dirname "$d")")"
    done | sort -n | tail -1
}

# The machine-wide "main" cluster (of the version used) serves the default port, or the
# port it was already moved to; another port gets a cluster of its own, so that asking
# for one never moves (and restarts) the server others use.
main_port() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$(pg_version)" '$1 == v && $2 == "main" { print $3; exit }'
}
if [ -n "${PG_CLUSTER:-}" ]; then
    CLUSTER=$PG_CLUSTER
elif [ "$PGPORT" = 5432 ] || [ "$(main_port)" = "$PGPORT" ]; then
    CLUSTER=main
else
    CLUSTER=switchyard-$PGPORT
fi

ensure_installed() {
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_version)" ]; then
        apt_install postgresql
    fi
    PG_VERSION=$(pg_version)
    [ -n "$PG_VERSION" ] || die "no PostgreSQL server found after installing the postgresql package"
}

cluster_status() { # prints online/down, or nothing when the cluster is missing
    pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$CLUSTER" '$1 == v && $2 == c { print $4 }'
}

# psql as the postgres superuser over the Unix socket (peer auth), SQL on
# stdin. cd / first: the postgres user usually cannot read the caller's
# working directory.
psql_admin() {
    (cd / && runuser -u postgres -- psql -p "$PGPORT" -X -q -v ON_ERROR_STOP=1)
}

ready() { pg_isready -q -h 127.0.0.1 -p "$PGPORT" -t 2; }

cmd_up() {
    ensure_installed
    local t0=$SECONDS status restart=
    status=$(cluster_status)
    if [ -z "$status" ]; then
        log "creating cluster $PG_VERSION/$CLUSTER on port $PGPORT"
        pg_createcluster "$PG_VERSION" "$CLUSTER" --port "$PGPORT" >/dev/null
        status=down
    fi

    # Listen on 127.0.0.1:$PGPORT. Debian's default listen_addresses is
    # 'localhost' (left commented out), which already includes 127.0.0.1.
    local port listen
    port=$(pg_conftool -s "$PG_VERSION" "$CLUSTER" get port || true)
    if [ "$port" != "$PGPORT" ]; then
        log "setting port $PGPORT (was ${port:-unset})"
        pg_conftool "$PG_VERSION" "$CLUSTER" set port "$PGPORT"
        restart=1
    fi
    listen=$(pg_conftool -s "$PG_VERSION" "$CLUSTER" get listen_addresses || true)
    case "${listen:-localhost}" in
        *localhost* | *127.0.0.1* | '*') ;;
        *)
            log "adding 127.0.0.1 to listen_addresses (was $listen)"
            pg_conftool "$PG_VERSION" "$CLUSTER" set listen_addresses "$listen,127.0.0.1"
            restart=1
            ;;
    esac

    if [ "$status" = online ] && [ -n "$restart" ]; then
        log "restarting postgres $PG_VERSION/$CLUSTER for the new settings"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$CLUSTER" restart
    elif [ "$status" = online ]; then
        log "postgres $PG_VERSION/$CLUSTER already running"
    else
        log "starting postgres $PG_VERSION/$CLUSTER on 127.0.0.1:$PGPORT"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$CLUSTER" start
    fi

    local deadline=$((SECONDS + PG_START_TIMEOUT))
    until ready; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            local logfile=/var/log/postgresql/postgresql-$PG_VERSION-$CLUSTER.log
            [ -f "$logfile" ] && { echo "----- last lines of $logfile -----" >&2; tail -n 30 "$logfile" >&2; }
            die "postgres not ready on 127.0.0.1:$PGPORT within ${PG_START_TIMEOUT} s"
        fi
        sleep 0.5
    done

    # Role and database, idempotently. ALTER on every run keeps the password
    # known even if someone changed it. CREATE DATABASE cannot run inside a
    # DO block, hence \gexec.
    psql_admin <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  ELSE
    ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END
\$\$;
-- Tests drop their temporary databases WITH (FORCE); PostgreSQL refuses that while an
-- autovacuum worker is on the database unless the role may signal backends.
GRANT pg_signal_backend TO $DB_USER;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL

    # Prove a password login over TCP works, as the application will do it.
    psql "$LOCAL_URL" -X -q -tA -c 'select 1' >/dev/null ||
        die "password login as $DB_USER over TCP failed ($LOCAL_URL)"
    log "postgres $PG_VERSION ready on 127.0.0.1:$PGPORT after $((SECONDS - t0)) s (database $DB_NAME, role $DB_USER)"
}

cmd_down() {
    PG_VERSION=$(pg_version)
    if [ -z "$PG_VERSION" ] || ! command -v pg_ctlcluster >/dev/null; then
        log "postgres not installed"
        return 0
    fi
    if [ "$(cluster_status)" != online ]; then
        log "postgres not running"
        return 0
    fi
    log "stopping postgres $PG_VERSION/$CLUSTER"
    pg_ctlcluster --skip-systemctl-redirect --mode=fast "$PG_VERSION" "$CLUSTER" stop
    log "postgres stopped"
}

cmd_status() {
    if command -v pg_isready >/dev/null && ready; then
        log "postgres up on 127.0.0.1:$PGPORT"
    else
        log "postgres not answering on 127.0.0.1:$PGPORT"
        return 1
    fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
