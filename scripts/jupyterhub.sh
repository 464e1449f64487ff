#!/usr/bin/env bash
# A real JupyterHub for notebook users, with the gateway registered as a hub service (issue 11).
# Run as root:  scripts/jupyterhub.sh up | down | status
#
#   up      installs (once) a venv with JupyterHub, JupyterLab and the notebook users' client
#           (dask-gateway, dask, distributed at the project's pinned versions) and, with npm,
#           configurable-http-proxy (locally, under the prefix); writes the hub's config; sets
#           the users' PAM passwords; starts the hub in the background. Idempotent: a running
#           hub is left running, or restarted if its config changed.
#   down    stops the hub, its proxy and the single-user servers it started.
#   status  says whether the hub runs and answers (exit 0 if it does).
#
# Settings (environment):
#   HUB_PREFIX          where everything goes (default /opt/slurm-gateway/hub): venv/,
#                       node_modules/, etc/ (config, users' gateway.yaml), state/ (hub database,
#                       cookie secret), secrets/ (tokens, passwords; root 0700), run/, log/
#   HUB_PORT            the hub's public address is 127.0.0.1:HUB_PORT (default 8010); the hub
#                       API listens on HUB_PORT+1, the proxy's API on HUB_PORT+2, users'
#                       servers on random ports
#   HUB_USERS           the users who may log in (default "alice bob"); they must exist
#   HUB_SET_PASSWORDS   1 (default): give each user a new random password (chpasswd) at each
#                       `up`, kept in secrets/passwords ("user:password" lines); 0: leave
#                       passwords alone
#   HUB_GATEWAY_ADDRESS the gateway's public address (its proxy), e.g. http://127.0.0.1:8000,
#                       for etc/dask/gateway.yaml (that address, `auth: jupyterhub`), which the
#                       users' servers find through DASK_CONFIG; empty: the servers use the
#                       site's /etc/dask/gateway.yaml
# The gateway needs no hub token of its own: see README, "Connect your site's users".
# Everything under the prefix is root's alone (umask 077) except what users' servers run or
# read: venv/, node_modules/ (the proxy runs as root, but harmless to read) and etc/.
# This is a dev/test hub on loopback ports over plain http: see the README for a site's.
set -euo pipefail
umask 077
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# npm hangs without a home (its cache and config live there); pip wants one for its cache.
export HOME=${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${HUB_PREFIX:-/opt/slurm-gateway/hub}
port=${HUB_PORT:-8010}
users=${HUB_USERS:-alice bob}
set_passwords=${HUB_SET_PASSWORDS:-1}
gateway_address=${HUB_GATEWAY_ADDRESS:-}
python=${HUB_PYTHON:-/usr/bin/python3}  # readable by every user (pyenv's lives under /root)
pidfile=$prefix/run/jupyterhub.pid
log=$prefix/log/jupyterhub.log

# The notebook users' Python: the hub and the single-user servers share this venv, so its
# kernels run the versions the project pins (pyproject.toml, test extras).
packages=(
    "jupyterhub>=5,<6" "jupyterlab>=4,<5" ipykernel pamela
    "dask-gateway==2026.3.0" "distributed==2026.8.0" "dask==2026.8.0"
)
chp_version="4.6.3"

log_msg() { echo "jupyterhub.sh: $*" >&2; }

running() {
    local pid
    [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill -0 "$pid" 2>/dev/null || return 1
    # our hub (root's, from this prefix), not another process that got the pid since
    [ "$(stat -c %u "/proc/$pid")" = 0 ] \
        && grep -qF "$prefix/venv/bin/jupyterhub" "/proc/$pid/cmdline" 2>/dev/null
}

# listener_uid PORT: the uid owning the socket listening on 127.0.0.1:PORT (empty if none).
listener_uid() {
    awk -v addr="$(printf '0100007F:%04X' "$1")" \
        'NR > 1 && $2 == addr && $4 == "0A" { print $8; exit }' /proc/net/tcp
}

answering() {
    curl -fsS --max-time 3 "http://127.0.0.1:$port/hub/api/" >/dev/null 2>&1
}

install_venv() {
    local stamp="${packages[*]} $python"
    if [ -f "$prefix/venv/.stamp" ] && [ "$(cat "$prefix/venv/.stamp")" = "$stamp" ]; then
        return 0
    fi
    log_msg "building $prefix/venv"
    rm -rf "$prefix/venv"
    "$python" -m venv "$prefix/venv"
    "$prefix/venv/bin/pip" install --quiet --upgrade pip
    "$prefix/venv/bin/pip" install --quiet "${packages[@]}"
    echo "$stamp" > "$prefix/venv/.stamp"
}

install_proxy() {
    local chp=$prefix/node_modules/.bin/configurable-http-proxy
    if [ -x "$chp" ] && [ "$("$chp" --version 2>/dev/null)" = "$chp_version" ]; then
        return 0
    fi
    command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
    log_msg "installing configurable-http-proxy $chp_version under $prefix"
    [ -f "$prefix/package.json" ] || echo '{"name": "slurm-gateway-hub", "private": true}' \
        > "$prefix/package.json"
    # (npm retries for minutes when the registry is unreachable or its certificate unknown:
    # NODE_EXTRA_CA_CERTS where TLS is intercepted)
    timeout 600 npm install --prefix "$prefix" --no-audit --no-fund --silent \
        "configurable-http-proxy@$chp_version"
}

# secret FILE: create a random hex token in FILE (0600, root's) once; print it.
secret() {
    if [ -L "$1" ] || { [ -e "$1" ] && [ ! -f "$1" ]; }; then
        log_msg "$1 is not a regular file"; exit 1
    fi
    [ -s "$1" ] || openssl rand -hex 32 > "$1"
    chown root:root "$1" && chmod 0600 "$1"
    cat "$1"
}

set_user_passwords() {
    local file=$prefix/secrets/passwords user password
    (umask 077 && : > "$file.new")
    for user in $users; do
        id "$user" >/dev/null 2>&1 || { log_msg "no such user: $user"; exit 1; }
        password=$(openssl rand -hex 12)
        echo "$user:$password" | chpasswd
        echo "$user:$password" >> "$file.new"
    done
    mv "$file.new" "$file"
}

write_client_config() {
    install -d -m 0755 "$prefix/etc/dask"
    if [ -n "$gateway_address" ]; then
        printf 'gateway:\n  address: %s\n  auth:\n    type: jupyterhub\n' "$gateway_address" \
            > "$prefix/etc/dask/gateway.yaml"
    else
        rm -f "$prefix/etc/dask/gateway.yaml"
    fi
    chmod -R a+rX "$prefix/etc"
}

write_config() {
    install -d -m 0755 "$prefix/etc"
    install -d -m 0700 "$prefix/state" "$prefix/secrets" "$prefix/run" "$prefix/log"
    chmod -R go-rwx "$prefix/state" "$prefix/secrets" "$prefix/run" "$prefix/log"
    secret "$prefix/state/jupyterhub_cookie_secret" > /dev/null
    rm -f "$prefix/secrets/gateway-api-token"  # older versions made one; never used
    HUB_ADMIN_TOKEN=$(secret "$prefix/secrets/admin-api-token") \
    HUB_PREFIX=$prefix HUB_PORT=$port HUB_USERS=$users \
    HUB_GATEWAY_ADDRESS=$gateway_address \
        "$python" "$repo/scripts/hub-config.py" > "$prefix/secrets/jupyterhub_config.py.new"
    if cmp -s "$prefix/secrets/jupyterhub_config.py.new" "$prefix/secrets/jupyterhub_config.py"
    then
        rm "$prefix/secrets/jupyterhub_config.py.new"
    else
        mv "$prefix/secrets/jupyterhub_config.py.new" "$prefix/secrets/jupyterhub_config.py"
        config_changed=1
    fi
}

start_hub() {
    if running; then
        log_msg "already running (pid $(cat "$pidfile"))"
        return 0
    fi
    local taken
    taken=$(listener_uid "$port")
    if [ -n "$taken" ]; then  # someone else's: it would get users' passwords
        log_msg "127.0.0.1:$port is already taken (by uid $taken); not starting"
        exit 1
    fi
    log_msg "starting the hub on http://127.0.0.1:$port (log $log)"
    (
        cd "$prefix/state"
        PATH="$prefix/venv/bin:$prefix/node_modules/.bin:$PATH" setsid \
            "$prefix/venv/bin/jupyterhub" -f "$prefix/secrets/jupyterhub_config.py" \
            >> "$log" 2>&1 < /dev/null &
        echo $! > "$pidfile"
    )
    for _ in $(seq 1 60); do
        if answering && [ "$(listener_uid "$port")" = 0 ]; then
            log_msg "up (pid $(cat "$pidfile"))"
            return 0
        fi
        running || break
        sleep 1
    done
    log_msg "the hub did not start; the end of $log:"
    tail -n 40 "$log" >&2
    stop_hub
    exit 1
}

stop_hub() {
    if running; then
        local pid
        pid=$(cat "$pidfile")
        log_msg "stopping the hub (pid $pid) and what it started"
        kill -TERM "$pid"
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    # The proxy (the hub's cleanup stops it; its pid file says which, if it did not).
    local chp_pid=$prefix/state/jupyterhub-proxy.pid
    if [ -f "$chp_pid" ] && kill -0 "$(cat "$chp_pid")" 2>/dev/null \
        && grep -q configurable-http-proxy "/proc/$(cat "$chp_pid")/cmdline" 2>/dev/null; then
        kill -TERM "$(cat "$chp_pid")" || true
    fi
    rm -f "$pidfile" "$chp_pid"
    # Users' servers and their kernels run in sessions of their own: a hub killed before its
    # cleanup leaves them. Anything still running from the hub's venv goes.
    if pkill -TERM -f -- "$prefix/venv/" 2>/dev/null; then
        for _ in $(seq 1 10); do pgrep -f -- "$prefix/venv/" >/dev/null || break; sleep 1; done
        pkill -KILL -f -- "$prefix/venv/" 2>/dev/null || true
    fi
}

case "${1:-}" in
    up)
        [ "$(id -u)" = 0 ] || { log_msg "run as root"; exit 1; }
        install -d -m 0755 "$prefix"
        install_venv
        install_proxy
        chmod -R a+rX "$prefix/venv" "$prefix/node_modules"
        config_changed=0
        write_config
        write_client_config
        [ "$config_changed" = 1 ] && running && stop_hub
        [ "$set_passwords" = 1 ] && set_user_passwords
        start_hub
        ;;
    down)
        stop_hub
        ;;
    status)
        if running && answering; then
            echo "running (pid $(cat "$pidfile")), http://127.0.0.1:$port"
        else
            echo "not running"
            exit 3
        fi
        ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
