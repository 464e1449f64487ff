#!/usr/bin/env bash
# sshd.sh -- a login node reachable over SSH, for testing the gateway's SSH transport
# (slurm_gateway.ssh_transport.SSHSudoRunner) on this one machine.
#
# Usage (as root):
#   scripts/sshd.sh up      install Debian's openssh-server if missing; start an sshd of our
#                           own on 127.0.0.1:$SSHD_PORT (own config and host key, key login
#                           only, AllowUsers slurmgw); a key pair and a known_hosts file for
#                           the service account (idempotent)
#   scripts/sshd.sh down    stop that sshd and every session it serves
#   scripts/sshd.sh purge   down, remove its directory and the service account's SSH files
#   scripts/sshd.sh status  whether it runs
#
# Files: $SSHD_DIR (root's: sshd_config, host key, authorized_keys/slurmgw, pid, log) and
# $CLIENT_DIR (slurmgw's, 0700: id_ed25519, known_hosts). The service account gets a login
# shell (/bin/sh: sshd runs every command through it) and "*" for a password (none; sshd
# refuses accounts locked with "!" even for keys). Everything in $CLIENT_DIR is done as the
# service account (as_service): it owns the directory and could put a link there to a file
# of root's, which root would write or read through.
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

SSHD_PORT=${SSHD_PORT:-18722}
SSHD_ADDR=127.0.0.1
SSHD_DIR=/etc/slurm-gateway-dev-sshd
CLIENT_DIR=/var/lib/slurm-gateway/.ssh
SERVICE_USER=slurmgw
SHELL_FOR_SSH=/bin/sh

log() { printf '[sshd] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

install_server() {
    [[ -x /usr/sbin/sshd ]] && return 0
    # Without starting Debian's own sshd on port 22.
    apt_install openssh-server || die "apt-get failed (rc $?)"
}

# Run a command as the service account, from / (root's working directory may be closed to it).
as_service() { (cd / && runuser -u "$SERVICE_USER" -- "$@"); }

pid_of_sshd() {
    local pid
    [[ -r $SSHD_DIR/sshd.pid ]] || return 1
    pid=$(<"$SSHD_DIR/sshd.pid")
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == sshd ]] || return 1
    printf '%s' "$pid"
}

write_config() {
    install -d -o root -g root -m 0755 "$SSHD_DIR" "$SSHD_DIR/authorized_keys"
    [[ -f $SSHD_DIR/host_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "slurm-gateway dev login node" -f "$SSHD_DIR/host_ed25519"
    cat >"$SSHD_DIR/sshd_config" <<EOF
# The dev login node of slurm-gateway's SSH transport tests (scripts/sshd.sh).
ListenAddress $SSHD_ADDR:$SSHD_PORT
HostKey $SSHD_DIR/host_ed25519
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys/%u
AllowUsers $SERVICE_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes yes
MaxSessions 10
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitUserEnvironment no
ClientAliveInterval 15
LogLevel VERBOSE
EOF
}

client_files() {
    id -u "$SERVICE_USER" >/dev/null 2>&1 ||
        die "no account $SERVICE_USER: run scripts/dev-cluster.sh up first"
    local home
    home=$(getent passwd "$SERVICE_USER" | cut -d: -f6)
    [[ $CLIENT_DIR == "$home/.ssh" ]] || die "$SERVICE_USER's home is $home, not ${CLIENT_DIR%/.ssh}"
    as_service install -d -m 0700 "$CLIENT_DIR" || die "cannot make $CLIENT_DIR as $SERVICE_USER"
    if ! as_service test -f "$CLIENT_DIR/id_ed25519"; then
        as_service ssh-keygen -q -t ed25519 -N '' \
            -C "$SERVICE_USER@slurm-gateway" -f "$CLIENT_DIR/id_ed25519"
    fi
    local public_key
    public_key=$(as_service head -c 4096 "$CLIENT_DIR/id_ed25519.pub") ||
        die "$SERVICE_USER cannot read $CLIENT_DIR/id_ed25519.pub"
    [[ $public_key == ssh-ed25519\ * && $public_key != *$'\n'* ]] ||
        die "$CLIENT_DIR/id_ed25519.pub is not one ed25519 public key"
    printf '%s\n' "$public_key" >"$SSHD_DIR/authorized_keys/$SERVICE_USER"
    chmod 0644 "$SSHD_DIR/authorized_keys/$SERVICE_USER"
    # The host key as sshd shows it, written from its file (not scanned over the network),
    # under a new name and renamed over known_hosts (replacing a link, not writing through it).
    printf '[%s]:%s %s\n' "$SSHD_ADDR" "$SSHD_PORT" "$(cut -d' ' -f1,2 "$SSHD_DIR/host_ed25519.pub")" |
        as_service sh -c 'umask 022 && t=$(mktemp "$1.XXXXXX") && cat >"$t" && chmod 0644 "$t" &&
            mv -f -T "$t" "$1"' sh "$CLIENT_DIR/known_hosts" ||
        die "cannot write $CLIENT_DIR/known_hosts as $SERVICE_USER"
    # sshd runs commands through the account's login shell.
    if [[ $(getent passwd "$SERVICE_USER" | cut -d: -f7) != "$SHELL_FOR_SSH" ]]; then
        usermod -s "$SHELL_FOR_SSH" "$SERVICE_USER"
        log "$SERVICE_USER's login shell is now $SHELL_FOR_SSH"
    fi
    # sshd refuses a locked account ("!" in /etc/shadow) even for key logins; "*" is no
    # password at all, not a locked account.
    if [[ $(getent shadow "$SERVICE_USER" | cut -d: -f2) == '!'* ]]; then
        usermod -p '*' "$SERVICE_USER"
    fi
}

cmd_up() {
    install_server
    write_config
    client_files
    install -d -m 0755 /run/sshd # privilege separation directory
    /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config" || die "sshd_config does not validate"
    if pid_of_sshd >/dev/null; then
        log "sshd already up (pid $(pid_of_sshd)) on $SSHD_ADDR:$SSHD_PORT"
        return 0
    fi
    /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log"
    local n
    for ((n = 0; n < 50; n++)); do
        if pid_of_sshd >/dev/null; then
            log "sshd up (pid $(pid_of_sshd)) on $SSHD_ADDR:$SSHD_PORT; key $CLIENT_DIR/id_ed25519, known_hosts $CLIENT_DIR/known_hosts"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$SSHD_DIR/sshd.log" >&2 || true
    die "sshd did not start"
}

# The listener and its sessions (sshd's children and theirs): all of it goes, like a
# login node that went away.
session_pids() {
    local root=$1
    ps -e -o pid=,ppid= | awk -v root="$root" '
        { parent[$1] = $2 }
        END {
            found[root] = 1; grew = 1
            while (grew) { grew = 0; for (p in parent) if (!(p in found) && (parent[p] in found)) { found[p] = 1; grew = 1 } }
            for (p in found) print p
        }'
}

cmd_down() {
    local pid pids n
    pid=$(pid_of_sshd) || {
        log "sshd not running"
        return 0
    }
    mapfile -t pids < <(session_pids "$pid")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((n = 0; n < 50; n++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    rm -f "$SSHD_DIR/sshd.pid"
    log "sshd stopped (pid $pid, with its sessions: ${#pids[@]} processes)"
}

cmd_purge() {
    cmd_down
    rm -rf -- "$SSHD_DIR" "$CLIENT_DIR"
    if id -u "$SERVICE_USER" >/dev/null 2>&1 &&
        [[ $(getent passwd "$SERVICE_USER" | cut -d: -f7) == "$SHELL_FOR_SSH" ]]; then
        usermod -s /usr/sbin/nologin -p '!' "$SERVICE_USER"
    fi
    log "purged $SSHD_DIR and $CLIENT_DIR"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
purge) cmd_purge ;;
status)
    if pid=$(pid_of_sshd); then echo "sshd up (pid $pid) on $SSHD_ADDR:$SSHD_PORT"; else
        echo "sshd down"
        exit 3
    fi
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
