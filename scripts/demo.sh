#!/usr/bin/env bash
# The main job (run as root): a local SLURM cluster plus the gateway, running as its service
# account like a site's login node, then a real computation by alice with `Gateway()`. The
# gateway knows alice by munge (her uid; no password anywhere): a client that merely claims
# to be alice is refused, as the end shows.
#   scripts/demo.sh         bring everything up, run examples/quickstart.py as alice
#   scripts/demo.sh stop    stop the gateway (scripts/dev-cluster.sh down stops SLURM)
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=/opt/slurm-gateway/venv
pidfile=/run/slurm-gateway/gateway.pid
proxy_pidfile=/run/slurm-gateway/proxy.pid
log=/var/log/slurm-gateway-service.log
proxy_log=/var/log/slurm-gateway-proxy.log

stop_service() { # pid file
    if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
        kill "$(cat "$1")"
        for _ in $(seq 1 60); do kill -0 "$(cat "$1")" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$1"
}

stop_gateway() {
    stop_service "$pidfile"
    stop_service "$proxy_pidfile"
}

start_service() { # pid file, log file, slurm-gateway arguments...
    local pid_file=$1 log_file=$2
    shift 2
    touch "$log_file" && chown slurmgw "$log_file" && chmod 0640 "$log_file"
    (cd / && exec runuser -u slurmgw -- "$venv/bin/slurm-gateway" "$@" >>"$log_file" 2>&1) &
    echo $! >"$pid_file"
}

if [ "${1:-}" = stop ]; then
    stop_gateway
    echo "demo: gateway stopped"
    exit 0
fi

bash "$repo/scripts/dev-cluster.sh" up
bash "$repo/scripts/build-envs.sh"

# The admin's part: one config file, readable by the service account only.
install -d -m 0750 -o root -g slurmgw /etc/slurm-gateway
install -m 0640 -o root -g slurmgw "$repo/scripts/dev-gateway-config.py" /etc/slurm-gateway/config.py
# The site's default endpoint for `Gateway()` with no arguments.
install -d -m 0755 /etc/dask
runuser -u slurmgw -- "$venv/bin/slurm-gateway" client-config -f /etc/slurm-gateway/config.py \
    > /etc/dask/gateway.yaml
chmod 0644 /etc/dask/gateway.yaml

stop_gateway
install -d -m 0755 -o slurmgw /run/slurm-gateway
# Two services, as the README has a site run them: the proxy, then the gateway.
start_service "$proxy_pidfile" "$proxy_log" proxy -f /etc/slurm-gateway/config.py
start_service "$pidfile" "$log" -f /etc/slurm-gateway/config.py
for _ in $(seq 1 60); do
    "$venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/api/health', timeout=1)" \
        2>/dev/null && break
    sleep 0.5
done
echo "demo: gateway running as slurmgw (pid $(cat "$pidfile"), log $log; proxy pid $(cat "$proxy_pidfile"), log $proxy_log)"

install -m 0644 "$repo/examples/quickstart.py" /tmp/slurm-gateway-quickstart.py
echo "demo: alice's Gateway() authenticates with munge ($(grep -o 'type: .*' /etc/dask/gateway.yaml)), no password"
cd /tmp && runuser -u alice -- env -i PATH=/usr/bin:/bin HOME=/home/alice USER=alice \
    X509_USER_PROXY=/tmp/x509up_u1001 "$venv/bin/python" /tmp/slurm-gateway-quickstart.py

# A name is not an identity: bob claiming to be alice (HTTP basic auth) gets 401.
runuser -u bob -- env -i PATH=/usr/bin:/bin HOME=/home/bob USER=bob "$venv/bin/python" -c '
import sys
from dask_gateway import BasicAuth, Gateway
try:
    with Gateway(auth=BasicAuth("alice")) as gateway:
        gateway.list_clusters()
except Exception as exc:
    if "401" not in str(exc):
        raise
    print(f"demo: bob claiming to be alice with BasicAuth(\"alice\") is refused: {exc}"[:200])
else:
    sys.exit("demo: BasicAuth(\"alice\") was accepted: the gateway trusts names it is sent!")
'
echo "demo: done; the gateway keeps running (scripts/demo.sh stop to stop it)"
