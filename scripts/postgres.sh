#!/usr/bin/env bash
# postgres.sh -- the project's own PostgreSQL instance, a state database for slurm-gateway
# (c.SlurmBackend.db_url), from Debian's `postgresql` package.
#
# Usage (as root):
#   scripts/postgres.sh up       install postgresql if missing, create and start the instance,
#                                the role slurmgw and its database slurm_gateway (idempotent)
#   scripts/postgres.sh down     stop the instance (data kept)
#   scripts/postgres.sh status   whether it runs and answers
#   scripts/postgres.sh purge    stop it and remove its data, configuration, socket and log
#                                (scripts/dev-cluster.sh purge calls this)
#
# The instance is not Debian's default cluster (a machine may have one, on 5432): its data
# and configuration live in $PG_HOME, it runs as the `postgres` account and listens on a
# Unix socket in $PG_SOCKET_DIR only ($PG_PORT names the socket: .s.PGSQL.$PG_PORT). No TCP:
# any local account may reach a loopback port, take it while the server is down, or hold
# connections open to exhaust max_connections.
#
# Authentication is peer over the Unix socket: the database role is the connecting process's
# Unix account, which the kernel reports; there is no password to store, leak or rotate.
# Only postgres and slurmgw may even connect: the socket directory is postgres's, group
# slurmgw, mode 2750 (no other account can create, replace or reach a socket in it; the
# setgid bit gives the socket the group), and the socket is 0770. Only slurmgw (its
# databases) and postgres (administration) may log in.
#
# The gateway's URL:
#   postgresql+psycopg://slurmgw@/slurm_gateway?host=/run/slurm-gateway-postgres&port=18730
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

PG_PORT=18730
PG_HOME=/var/lib/slurm-gateway-postgres # root's; holds data/ (postgres's, 0700) and the log
PG_DATA=$PG_HOME/data
PG_LOG=$PG_HOME/postgres.log
PG_SOCKET_DIR=/run/slurm-gateway-postgres
PG_OS_USER=postgres
SERVICE_USER=slurmgw
SERVICE_DB=slurm_gateway
CONFIG_CHANGED=0 # set by write_config

log() { printf '[postgres] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# The newest installed server's bin directory (empty if none).
pg_bin() {
    local dirs=()
    mapfile -t dirs < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V)
    ((${#dirs[@]} > 0)) && [[ -x ${dirs[-1]}/pg_ctl ]] && printf '%s' "${dirs[-1]}"
    return 0
}

install_postgresql() {
    [[ -n $(pg_bin) ]] && return 0
    # Without starting Debian's default cluster: only this instance is ours.
    apt_install postgresql || die "apt-get failed (rc $?)"
    [[ -n $(pg_bin) ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl"
}

as_postgres() { runuser -u "$PG_OS_USER" -- "$@"; }

# psql as the superuser over our socket; extra arguments to psql.
admin_psql() {
    as_postgres "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" \
        -d postgres "$@"
}

# Writes stdin to $PG_DATA/$1 as the postgres account, mode 0600, through a new file renamed
# over the old one. Root never opens a path in postgres's directory: a link planted there
# (by whoever runs as postgres) would take root's write anywhere; here it is replaced, not
# followed, and postgres writes only what postgres may write anyway.
write_as_postgres() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    as_postgres sh -c 'umask 077; new=$(mktemp "$1/.$2.XXXXXX") &&
        { cat >"$new" && mv -fT -- "$new" "$1/$2"; } || { rm -f -- "$new"; exit 1; }' \
        sh "$PG_DATA" "$1" || die "could not write $PG_DATA/$1"
}

# $PG_DATA/$1 as postgres reads it (bounded; empty if it cannot).
read_as_postgres() {
    as_postgres timeout 10 head -c 65536 -- "$PG_DATA/$1" 2>/dev/null || true
}

write_config() {
    install -d -o root -g root -m 0755 "$PG_HOME"
    getent group "$SERVICE_USER" >/dev/null ||
        die "no group $SERVICE_USER (the gateway's account): run scripts/dev-cluster.sh up first"
    install -d -o "$PG_OS_USER" -g "$SERVICE_USER" -m 2750 "$PG_SOCKET_DIR"
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        rm -rf "$PG_DATA"
        install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0700 "$PG_DATA"
        log "initdb $PG_DATA"
        as_postgres "$(pg_bin)/initdb" -D "$PG_DATA" -U "$PG_OS_USER" --auth=peer \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    install -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0600 /dev/null "$PG_LOG.new"
    [[ -f $PG_LOG ]] || mv "$PG_LOG.new" "$PG_LOG"
    rm -f "$PG_LOG.new"
    local before config
    # shellcheck disable=SC2016 # expanded by the inner shell
    as_postgres timeout 10 sh -c 'grep -qx "$2" "$1" || printf "%s\n" "$2" >>"$1"' \
        sh "$PG_DATA/postgresql.conf" "include 'slurm-gateway.conf'" ||
        die "could not include slurm-gateway.conf in $PG_DATA/postgresql.conf"
    before=$(read_as_postgres slurm-gateway.conf)
    config="# Written by scripts/postgres.sh (slurm-gateway); rewritten by each 'up'.
listen_addresses = '' # the Unix socket only
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0770 # postgres and group $SERVICE_USER (the directory's, setgid)
max_connections = 50
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_connections = off"
    write_as_postgres slurm-gateway.conf <<<"$config"
    write_as_postgres pg_hba.conf <<EOF
# Written by scripts/postgres.sh (slurm-gateway); rewritten by each 'up'.
# Unix socket, peer authentication only: the role is the connecting Unix account.
# TYPE  DATABASE  USER              ADDRESS      METHOD
local   all       $PG_OS_USER                    peer
local   all       $SERVICE_USER                  peer
EOF
    # Where the server listens is read at its start only: a running one restarts.
    [[ $before == "$config" ]] || CONFIG_CHANGED=1
}

running() { as_postgres "$(pg_bin)/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }
answering() {
    as_postgres "$(pg_bin)/pg_isready" -q -d postgres -h "$PG_SOCKET_DIR" -p "$PG_PORT"
}

start_server() {
    if running && answering && ((!CONFIG_CHANGED)); then
        as_postgres "$(pg_bin)/pg_ctl" reload -D "$PG_DATA" >/dev/null
        return 0
    fi
    # Its socket is gone (/run emptied, the directory removed), or where it listens changed.
    if running; then
        log "restarting it (its configuration changed, or it does not answer on $PG_SOCKET_DIR)"
        as_postgres "$(pg_bin)/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    fi
    log "starting PostgreSQL on $PG_SOCKET_DIR"
    # pg_ctl starts the server in a session of its own: it outlives this script.
    as_postgres "$(pg_bin)/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 >/dev/null ||
        die "PostgreSQL did not start; $PG_LOG says: $(tail -n 20 "$PG_LOG")"
}

ensure_role_and_database() {
    if [[ -z $(admin_psql -tA -c "SELECT 1 FROM pg_roles WHERE rolname = '$SERVICE_USER'") ]]; then
        admin_psql -c "CREATE ROLE $SERVICE_USER LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        log "created role $SERVICE_USER"
    fi
    if [[ -z $(admin_psql -tA -c "SELECT 1 FROM pg_database WHERE datname = '$SERVICE_DB'") ]]; then
        admin_psql -c "CREATE DATABASE $SERVICE_DB OWNER $SERVICE_USER"
        log "created database $SERVICE_DB"
    fi
}

stop_server() {
    local bin pid
    bin=$(pg_bin)
    if [[ -n $bin && -f $PG_DATA/PG_VERSION ]]; then
        running && as_postgres "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    elif [[ -f $PG_DATA/postmaster.pid ]]; then # the package is gone: stop it by its pid
        # Read and signalled as postgres: a pid planted there cannot make root kill anything.
        pid=$(read_as_postgres postmaster.pid | head -n 1)
        [[ $pid =~ ^[0-9]+$ ]] && as_postgres kill -TERM "$pid" 2>/dev/null || true
    fi
    return 0
}

cmd_up() {
    install_postgresql
    write_config
    start_server
    ensure_role_and_database
    log "up: postgresql+psycopg://$SERVICE_USER@/$SERVICE_DB?host=$PG_SOCKET_DIR&port=$PG_PORT"
}

cmd_status() {
    [[ -n $(pg_bin) ]] || { log "postgresql is not installed"; return 1; }
    [[ -f $PG_DATA/PG_VERSION ]] || { log "no instance in $PG_DATA"; return 1; }
    running || { log "down ($PG_DATA)"; return 1; }
    answering || { log "not answering on $PG_SOCKET_DIR"; return 1; }
    log "up: $PG_SOCKET_DIR/.s.PGSQL.$PG_PORT, data $PG_DATA"
}

cmd_purge() {
    stop_server
    local p
    for p in "$PG_HOME" "$PG_SOCKET_DIR"; do
        if [[ -e $p ]]; then
            rm -rf -- "$p"
            log "purge: removed $p"
        fi
    done
}

((EUID == 0)) || die "run me as root"
case ${1:-} in
up) cmd_up ;;
down) stop_server ;;
status) cmd_status ;;
purge) cmd_purge ;;
*) die "usage: $0 up|down|status|purge" ;;
esac
