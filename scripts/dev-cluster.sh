#!/usr/bin/env bash
# dev-cluster.sh -- a real Slurm 22.05 cluster (munge, MariaDB, slurmdbd,
# slurmctld, several slurmd) for developing and testing slurm-gateway.
#
# Usage (as root):
#   scripts/dev-cluster.sh up              bring everything up on this host (idempotent)
#   scripts/dev-cluster.sh down            stop the daemons this script started
#   scripts/dev-cluster.sh purge           back to a fresh machine: stop all daemons, remove the
#                                          users (the benchmark's carol too), groups, sudo rules, Slurm/munge/MariaDB config,
#                                          state and logs, the gateway's files, test leftovers
#                                          and the PostgreSQL instance of scripts/postgres.sh
#                                          (Debian packages stay installed)
#   scripts/dev-cluster.sh status          sinfo + which daemons are up
#   scripts/dev-cluster.sh prepare         packages, users, sudo rule, directories only
#   scripts/dev-cluster.sh role ROLE [ARG] one component in the foreground (containers):
#        config               write munge key + slurm.conf (+ cgroup.conf) and exit
#        dbd                  MariaDB + slurmdbd, registers cluster/account/users
#        controller           slurmctld
#        compute NODE         slurmd for node NODE
#        gateway              the slurm-gateway service, run as the service account
#
# The default ("single") layout puts everything on this one host, talking over
# 127.0.0.1 only: three compute nodes n1..n3 are three slurmd processes on
# ports 6831..6833.  SLURM_LAYOUT=multi switches to one host per component
# (see docker-compose.slurm.yml): node names are then resolvable host names.
#
# Environment knobs (defaults in brackets):
#   SLURM_LAYOUT            single | multi                          [single]
#   SLURM_CLUSTER_NAME      cluster name                            [devcluster]
#   SLURM_CONTROLLER_HOST   SlurmctldHost name                      [this host's short name]
#   SLURM_CONTROLLER_ADDR   address clients use for slurmctld       [127.0.0.1 | none]
#   SLURM_DBD_HOST          where slurmdbd listens (AccountingStorageHost) [127.0.0.1]
#   SLURM_DBD_ADDR          DbdAddr in slurmdbd.conf                [127.0.0.1 | none]
#   SLURM_NODES             compute node names                      [n1 n2 n3 | c1 c2]
#   SLURM_SCHEDULER_NODES   nodes of partition "schedulers"         [last node]
#   NODE_ADDR               NodeAddr for every node (single layout) [127.0.0.1]
#   SLURM_NODE_CPUS         CPUs claimed per node                   [16]
#   SLURM_NODE_MEMORY       RealMemory (MB) per node                [min(7000, 90% of RAM / nodes)]
#   SLURM_CGROUP            auto | yes | no  (cgroup v1 enforcement) [auto]
#   SLURM_DB_PASSWORD       MariaDB password of user slurm          [kept in slurmdbd.conf, else random]
#   SLURM_GATEWAY_CMD       command of "role gateway" (run as slurmgw) [slurm-gateway]
#   SLURM_GATEWAY_SUDOERS   the sudo rule installed by "prepare"/"up"  [deploy/sudoers of the repository]
set -euo pipefail
# useradd, userdel, visudo, runuser, slurmd... live in sbin, which a root shell's PATH
# may lack (su without "-", some CI runners).
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server sudo python3-venv)

SLURM_LAYOUT=${SLURM_LAYOUT:-single}
CLUSTER_NAME=${SLURM_CLUSTER_NAME:-devcluster}
THIS_HOST=$(uname -n)
THIS_HOST=${THIS_HOST%%.*}

case $SLURM_LAYOUT in
single)
    CONTROLLER_HOST=${SLURM_CONTROLLER_HOST:-$THIS_HOST}
    CONTROLLER_ADDR=${SLURM_CONTROLLER_ADDR-127.0.0.1}
    DBD_HOST=${SLURM_DBD_HOST:-127.0.0.1}
    DBD_ADDR=${SLURM_DBD_ADDR-127.0.0.1}
    read -r -a NODES <<<"${SLURM_NODES:-n1 n2 n3}"
    NODE_ADDRESS=${NODE_ADDR:-127.0.0.1}
    ;;
multi)
    CONTROLLER_HOST=${SLURM_CONTROLLER_HOST:-slurmctld}
    CONTROLLER_ADDR=${SLURM_CONTROLLER_ADDR-}
    DBD_HOST=${SLURM_DBD_HOST:-slurmdbd}
    DBD_ADDR=${SLURM_DBD_ADDR-}
    read -r -a NODES <<<"${SLURM_NODES:-c1 c2}"
    NODE_ADDRESS=${NODE_ADDR:-}
    ;;
*)
    echo "dev-cluster: SLURM_LAYOUT must be 'single' or 'multi', not '$SLURM_LAYOUT'" >&2
    exit 2
    ;;
esac
((${#NODES[@]} > 0)) || { echo "dev-cluster: SLURM_NODES is empty" >&2; exit 2; }
read -r -a SCHEDULER_NODES <<<"${SLURM_SCHEDULER_NODES:-${NODES[${#NODES[@]} - 1]}}"
NODE_CPUS=${SLURM_NODE_CPUS:-16}
NODE_MEMORY=${SLURM_NODE_MEMORY:-}
CGROUP_MODE=${SLURM_CGROUP:-auto}
FIRST_SLURMD_PORT=6831 # single layout: node i listens on 6831+i-1

# Users of the development cluster.
DASK_GROUP=dask-users
DASK_USERS=(alice bob)
# Users of the cluster who are not allowed to use the gateway (not in $DASK_GROUP),
# e.g. mallory, the attacker of the security tests: she can submit jobs herself.
OTHER_USERS=(mallory)
# Users tests/e2e/test_load.py creates (in $DASK_GROUP); "purge" removes them.
LOAD_USERS=(load{01..20})
# The user benchmarks/run.py creates (in $DASK_GROUP) with its sudo rule for the stock
# backend; "purge" removes them.
BENCH_USERS=(carol)
BENCH_SUDOERS_FILE=/etc/sudoers.d/slurm-gateway-bench
SERVICE_USER=slurmgw
SERVICE_HOME=/var/lib/slurm-gateway
SLURM_ACCOUNT=dask

# Paths.
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/apt-install.sh
source "$SCRIPT_DIR/apt-install.sh"
RUN_DIR=/run/slurm-gateway-dev # pid files of the daemons this script started
LOG_DIR=/var/log/slurm
SLURM_ETC=/etc/slurm
SLURM_CONF_FILE=$SLURM_ETC/slurm.conf
CGROUP_CONF_FILE=$SLURM_ETC/cgroup.conf
SLURMDBD_CONF_FILE=$SLURM_ETC/slurmdbd.conf
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_BASE=/var/lib/slurm/slurmd
MUNGE_KEY=/etc/munge/munge.key
MYSQL_DATADIR=/var/lib/mysql
MYSQL_SOCKET=/run/mysqld/mysqld.sock
SUDOERS_FILE=/etc/sudoers.d/slurm-gateway
DB_NAME=slurm_acct_db
DB_USER=slurm

# Set while running.
SLURM_CONF_CHANGED=0
DBD_CONF_CHANGED=0
CGROUP_ACTIVE=0
DB_PASSWORD=

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
log() { printf '[dev-cluster] %s\n' "$*" >&2; }
warn() { printf '[dev-cluster] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[dev-cluster] ERROR: %s\n' "$*" >&2
    exit 1
}

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s)}"; }

tail_log() {
    local f
    for f in "$@"; do
        if [[ -r $f ]]; then
            printf -- '---- last lines of %s ----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        else
            printf -- '---- (no log file %s) ----\n' "$f" >&2
        fi
    done
}

# wait_for TIMEOUT_S "WHAT" LOGFILE CMD [ARGS...]: poll CMD until it succeeds;
# on timeout print the log tail and fail.
wait_for() {
    local timeout=$1 what=$2 logf=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail_log "$logf"
            die "timed out after ${timeout}s waiting for $what"
        fi
        sleep 0.2
    done
}

# pid_alive PIDFILE COMM: the pid in PIDFILE is a live process named COMM.
pid_alive() {
    local f=$1 comm=$2 pid
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    pid=${pid//[!0-9]/}
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(<"/proc/$pid/comm") == "$comm" ]]
}

pid_of() {
    local pid
    pid=$(<"$1")
    printf '%s' "${pid//[!0-9]/}"
}

# stop_daemons NAME PIDFILE COMM [NAME PIDFILE COMM ...]: SIGTERM all of them at
# once, wait (bounded) for them to exit, SIGKILL stragglers, remove pid files.
stop_daemons() {
    local names=() pids=() files=() i n
    while (($# >= 3)); do
        if pid_alive "$2" "$3"; then
            names+=("$1")
            pids+=("$(pid_of "$2")")
            log "stopping $1 (pid ${pids[-1]})"
            kill -TERM "${pids[-1]}" 2>/dev/null || true
        fi
        files+=("$2")
        shift 3
    done
    for ((n = 0; n < 150; n++)); do
        local alive=0
        for i in "${!pids[@]}"; do
            [[ -e /proc/${pids[i]} ]] && alive=1
        done
        ((alive)) || break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if [[ -e /proc/${pids[i]} ]]; then
            warn "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 30s; sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
    done
    ((${#files[@]} == 0)) || rm -f "${files[@]}"
}


# write_file PATH MODE OWNER:GROUP < content. Returns 0 if the file changed.
write_file() {
    local path=$1 mode=$2 owner=$3 content tmp
    content=$(cat)
    if [[ -f $path && "$(<"$path")" == "$content" ]]; then
        chown "$owner" "$path"
        chmod "$mode" "$path"
        return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chown "$owner" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    return 0
}

# Create an (empty) log file owned by the daemon's user, so daemons that drop
# privileges can write it while /var/log/slurm itself stays root-owned.
prepare_log() {
    local f=$1 owner=$2
    [[ -e $f ]] || : >"$f"
    chown "$owner" "$f"
    chmod 0640 "$f"
}

join_by() {
    local sep=$1 out=$2 x
    shift 2
    for x in "$@"; do out+="$sep$x"; done
    printf '%s' "$out"
}

require_root() {
    ((EUID == 0)) || die "run me as root"
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------
# logrotate: tests/unit/test_deploy.py rotates with deploy/logrotate.
PACKAGES+=(logrotate)

install_packages() {
    apt_install "${PACKAGES[@]}" || die "apt-get failed (rc $?)"
}

# ---------------------------------------------------------------------------
# Users, sudo rule, directories
# ---------------------------------------------------------------------------
create_users() {
    local u
    getent group "$DASK_GROUP" >/dev/null || groupadd "$DASK_GROUP"
    # The load test's and benchmark's users too: slurmctld resolves an association's user to
    # a uid when it loads it, so a user created later is refused ("Invalid account") while
    # limits are enforced.
    for u in "${DASK_USERS[@]}" "${LOAD_USERS[@]}" "${BENCH_USERS[@]}"; do
        if ! id -u "$u" >/dev/null 2>&1; then
            useradd --create-home --shell /bin/bash --groups "$DASK_GROUP" "$u"
            log "created user $u"
        elif ! id -nG "$u" | tr ' ' '\n' | grep -qx "$DASK_GROUP"; then
            usermod -aG "$DASK_GROUP" "$u"
        fi
    done
    for u in "${OTHER_USERS[@]}"; do
        if ! id -u "$u" >/dev/null 2>&1; then
            useradd --create-home --shell /bin/bash "$u"
            log "created user $u (not in $DASK_GROUP)"
        elif id -nG "$u" | tr ' ' '\n' | grep -qx "$DASK_GROUP"; then
            gpasswd -d "$u" "$DASK_GROUP" >/dev/null
            log "removed $u from $DASK_GROUP"
        fi
    done
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$SERVICE_HOME" --no-create-home \
            --shell /usr/sbin/nologin --comment "slurm-gateway service" "$SERVICE_USER"
        log "created service account $SERVICE_USER"
    fi
}

# The sudo rule of the service account: deploy/sudoers in the repository, the one
# copy of the rule (README.md quotes it), installed verbatim as $SUDOERS_FILE after
# visudo has validated it. SLURM_GATEWAY_SUDOERS names another copy of that file
# (for a copy of this script outside the repository, e.g. in a container image).
sudoers_source() {
    local src=${SLURM_GATEWAY_SUDOERS:-${SCRIPT_DIR%/*}/deploy/sudoers}
    [[ -r $src ]] || die "the sudo rule $src is missing (set SLURM_GATEWAY_SUDOERS to deploy/sudoers of the repository)"
    printf '%s' "$src"
}

install_sudoers() {
    local src out
    src=$(sudoers_source)
    if ! out=$(visudo -cf "$src" 2>&1); then
        printf '%s\n' "$out" >&2
        die "the sudo rule $src does not validate"
    fi
    install -d -m 0750 /etc/sudoers.d
    if write_file "$SUDOERS_FILE" 0440 root:root <"$src"; then
        log "installed $SUDOERS_FILE from $src"
    fi
    visudo -c >/dev/null || die "sudo configuration invalid after installing $SUDOERS_FILE"
}

create_dirs() {
    # Users create their own subdirectory; they cannot list the others'.
    install -d -o root -g root -m 1733 /var/log/slurm-gateway
    install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0700 "$SERVICE_HOME"
    install -d -o root -g "$SERVICE_USER" -m 0750 /etc/slurm-gateway
}

create_slurm_dirs() {
    # (Not $SLURM_ETC: containers may mount it read-only; write_slurm_conf makes it.)
    install -d -o root -g root -m 0755 "$RUN_DIR" "$LOG_DIR"
    install -d -o slurm -g slurm -m 0755 "$STATE_DIR"
    install -d -o root -g root -m 0755 "$SPOOL_BASE"
}

# ---------------------------------------------------------------------------
# munge
# ---------------------------------------------------------------------------
setup_munge() {
    install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    install -d -o munge -g munge -m 0755 /run/munge
    pid_alive "$RUN_DIR/munged.pid" munged && return 0
    if munge_ok; then
        log "munged already running (not started by this script); using it"
        return 0
    fi
    prepare_log "$LOG_DIR/munged.log" munge:munge
    if ! runuser -u munge -- /usr/sbin/munged --log-file="$LOG_DIR/munged.log"; then
        # Lost a race with another starter? Then use that daemon.
        sleep 0.5
        if munge_ok; then
            log "another munged came up meanwhile; using it"
            return 0
        fi
        tail_log "$LOG_DIR/munged.log"
        die "munged failed to start"
    fi
    wait_for 15 "munged" "$LOG_DIR/munged.log" munge_ok
    cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
    log "munged up"
}

# ---------------------------------------------------------------------------
# MariaDB (accounting storage)
# ---------------------------------------------------------------------------
setup_mariadb() {
    install -d -o mysql -g root -m 0755 /run/mysqld
    if [[ ! -d $MYSQL_DATADIR/mysql ]]; then
        log "initialising MariaDB data directory"
        install -d -o mysql -g mysql -m 0750 "$MYSQL_DATADIR"
        mariadb-install-db --user=mysql --datadir="$MYSQL_DATADIR" --skip-test-db \
            >"$LOG_DIR/mariadb-install.log" 2>&1 ||
            { tail_log "$LOG_DIR/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
}

mariadb_ok() { mariadb-admin --socket="$MYSQL_SOCKET" ping; }

start_mariadb() {
    pid_alive "$RUN_DIR/mariadb.pid" mariadbd && return 0
    if mariadb_ok >/dev/null 2>&1; then
        log "a MariaDB server not started by this script answers on $MYSQL_SOCKET; using it"
        return 0
    fi
    prepare_log "$LOG_DIR/mariadb.log" mysql:adm
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$MYSQL_DATADIR" \
        --bind-address=127.0.0.1 --port=3306 --socket="$MYSQL_SOCKET" \
        --pid-file=/run/mysqld/mysqld.pid --log-error="$LOG_DIR/mariadb.log" \
        --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
    local pid=$!
    wait_for 60 "MariaDB on $MYSQL_SOCKET" "$LOG_DIR/mariadb.log" mariadb_ok
    if [[ -s /run/mysqld/mysqld.pid ]]; then
        cp /run/mysqld/mysqld.pid "$RUN_DIR/mariadb.pid"
    else
        echo "$pid" >"$RUN_DIR/mariadb.pid"
    fi
    log "MariaDB up (127.0.0.1:3306)"
}

# The password lives in slurmdbd.conf; keep it across runs.
db_password() {
    if [[ -z $DB_PASSWORD ]]; then
        if [[ -n ${SLURM_DB_PASSWORD:-} ]]; then
            DB_PASSWORD=$SLURM_DB_PASSWORD
        elif [[ -r $SLURMDBD_CONF_FILE ]]; then
            DB_PASSWORD=$(sed -n 's/^StoragePass=//p' "$SLURMDBD_CONF_FILE" | tail -n 1)
        fi
        if [[ -z $DB_PASSWORD ]]; then
            DB_PASSWORD=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
        fi
    fi
    [[ $DB_PASSWORD =~ ^[A-Za-z0-9._-]+$ ]] ||
        die "SLURM_DB_PASSWORD may only contain letters, digits, '.', '_' and '-'"
}

setup_slurm_db() {
    db_password
    mariadb --socket="$MYSQL_SOCKET" <<SQL || die "could not create database $DB_NAME / user $DB_USER"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

# ---------------------------------------------------------------------------
# Slurm configuration
# ---------------------------------------------------------------------------
# Is the cgroup v1 hierarchy usable for memory enforcement, process tracking
# (freezer) and accounting (cpuacct)?  Probe by creating a child group.
cgroup_v1_usable() {
    local base=/sys/fs/cgroup probe ctl
    [[ -f $base/memory/memory.limit_in_bytes ]] || return 1
    [[ -f $base/freezer/cgroup.procs ]] || return 1
    [[ -f $base/cpuacct/cpuacct.usage ]] || return 1
    for ctl in memory freezer cpuacct; do
        probe=$base/$ctl/slurm-gateway-dev-probe.$$
        mkdir "$probe" 2>/dev/null || return 1
        if [[ $ctl == memory ]] && ! echo 104857600 >"$probe/memory.limit_in_bytes" 2>/dev/null; then
            rmdir "$probe" 2>/dev/null
            return 1
        fi
        rmdir "$probe" 2>/dev/null || return 1
    done
    return 0
}

decide_cgroup() {
    case $CGROUP_MODE in
    yes) CGROUP_ACTIVE=1 ;;
    no) CGROUP_ACTIVE=0 ;;
    auto)
        if cgroup_v1_usable; then
            CGROUP_ACTIVE=1
        else
            CGROUP_ACTIVE=0
            warn "cgroup v1 memory/freezer/cpuacct controllers are not usable here:" \
                "falling back to proctrack/linuxproc + task/none; --mem is then only" \
                "enforced by polling (OverMemoryKill), jobs will not end OUT_OF_MEMORY"
        fi
        ;;
    *) die "SLURM_CGROUP must be auto, yes or no" ;;
    esac
}

node_memory() {
    if [[ -n $NODE_MEMORY ]]; then
        printf '%s' "$NODE_MEMORY"
        return
    fi
    local total_kb per
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    if [[ $SLURM_LAYOUT == single ]]; then
        per=$((total_kb * 9 / 10 / 1024 / ${#NODES[@]}))
    else
        per=$((total_kb * 9 / 10 / 1024))
    fi
    ((per > 7000)) && per=7000
    ((per < 1000)) && per=1000
    printf '%s' "$per"
}

slurm_conf_text() {
    local mem ctl_host node i=0 nodes_csv sched_csv
    mem=$(node_memory)
    ctl_host=$CONTROLLER_HOST
    [[ -n $CONTROLLER_ADDR ]] && ctl_host+="($CONTROLLER_ADDR)"
    nodes_csv=$(join_by , "${NODES[@]}")
    sched_csv=$(join_by , "${SCHEDULER_NODES[@]}")
    cat <<EOF
# slurm.conf written by scripts/dev-cluster.sh (layout: $SLURM_LAYOUT). Do not edit:
# the script rewrites it on every "up".
ClusterName=$CLUSTER_NAME
SlurmctldHost=$ctl_host
SlurmctldPort=6817
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides

StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_BASE/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# Accounting through slurmdbd (MariaDB behind it).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$DBD_HOST
AccountingStoragePort=6819
# Association and QOS limits (MaxSubmitJobs...) apply, as on production sites: every user
# who submits needs an association (ensure_accounting adds them all).
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
EOF
    if ((CGROUP_ACTIVE)); then
        cat <<EOF
JobAcctGatherType=jobacct_gather/cgroup
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
EOF
    else
        cat <<EOF
# cgroup v1 was not usable here: no cgroup confinement, memory enforced by polling.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
EOF
    fi
    cat <<EOF

# Scheduling: cores + memory are consumable; quick scheduling for tests.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0
MaxArraySize=1001
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10

# Compute nodes. config_overrides lets them claim more than the hardware has.
EOF
    for node in "${NODES[@]}"; do
        if [[ $SLURM_LAYOUT == single ]]; then
            printf 'NodeName=%s NodeHostname=%s NodeAddr=%s Port=%s CPUs=%s CoresPerSocket=%s ThreadsPerCore=1 RealMemory=%s State=UNKNOWN\n' \
                "$node" "$THIS_HOST" "$NODE_ADDRESS" "$((FIRST_SLURMD_PORT + i))" "$NODE_CPUS" "$NODE_CPUS" "$mem"
        else
            printf 'NodeName=%s%s CPUs=%s CoresPerSocket=%s ThreadsPerCore=1 RealMemory=%s State=UNKNOWN\n' \
                "$node" "${NODE_ADDRESS:+ NodeAddr=$NODE_ADDRESS}" "$NODE_CPUS" "$NODE_CPUS" "$mem"
        fi
        i=$((i + 1))
    done
    cat <<EOF
PartitionName=workers Nodes=$nodes_csv Default=YES MaxTime=1-00:00:00 State=UP
PartitionName=schedulers Nodes=$sched_csv Default=NO MaxTime=1-00:00:00 State=UP
EOF
}

cgroup_conf_text() {
    cat <<'EOF'
# cgroup.conf written by scripts/dev-cluster.sh
CgroupPlugin=cgroup/v1
ConstrainRAMSpace=yes
ConstrainCores=no
ConstrainDevices=no
ConstrainSwapSpace=no
EOF
}

write_slurm_conf() {
    decide_cgroup
    install -d -o root -g root -m 0755 "$SLURM_ETC"
    if slurm_conf_text | write_file "$SLURM_CONF_FILE" 0644 root:root; then
        SLURM_CONF_CHANGED=1
        log "wrote $SLURM_CONF_FILE"
    fi
    if ((CGROUP_ACTIVE)); then
        if cgroup_conf_text | write_file "$CGROUP_CONF_FILE" 0644 root:root; then
            SLURM_CONF_CHANGED=1
            log "wrote $CGROUP_CONF_FILE"
        fi
    elif [[ -f $CGROUP_CONF_FILE ]] && grep -q 'written by scripts/dev-cluster.sh' "$CGROUP_CONF_FILE"; then
        rm -f "$CGROUP_CONF_FILE"
        SLURM_CONF_CHANGED=1
    fi
}

slurmdbd_conf_text() {
    cat <<EOF
# slurmdbd.conf written by scripts/dev-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASSWORD
StorageLoc=$DB_NAME
EOF
    if [[ -n $DBD_ADDR ]]; then
        printf 'DbdAddr=%s\n' "$DBD_ADDR"
    fi
}

write_slurmdbd_conf() {
    db_password
    if slurmdbd_conf_text | write_file "$SLURMDBD_CONF_FILE" 0600 slurm:slurm; then
        DBD_CONF_CHANGED=1
        log "wrote $SLURMDBD_CONF_FILE"
    fi
}

# ---------------------------------------------------------------------------
# Slurm daemons
# ---------------------------------------------------------------------------
dbd_ok() { timeout 10 sacctmgr -n list cluster; }
ctld_ok() { timeout 10 scontrol ping | grep -q 'is UP'; }

start_slurmdbd() {
    if pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd; then
        ((DBD_CONF_CHANGED)) || return 0
        stop_daemons slurmdbd "$RUN_DIR/slurmdbd.pid" slurmdbd
    fi
    prepare_log "$LOG_DIR/slurmdbd.log" slurm:slurm
    slurmdbd || { tail_log "$LOG_DIR/slurmdbd.log"; die "slurmdbd failed to start"; }
    wait_for 60 "slurmdbd to answer" "$LOG_DIR/slurmdbd.log" dbd_ok
    log "slurmdbd up"
}

# Cluster, account and users in the accounting database (idempotent): the gateway's
# users, the others (mallory submits jobs herself), the load test's and benchmark's users
# (their Unix accounts are made first by create_users: limits are enforced) and the service account. One
# query when everything is already there (sacctmgr calls cost ~0.2 s each).
ensure_accounting() {
    local u assoc missing
    assoc=$(sacctmgr -nP list association format=cluster,account,user) ||
        die "sacctmgr cannot list associations"
    if ! grep -q "^$CLUSTER_NAME|" <<<"$assoc"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster failed"
        log "registered cluster $CLUSTER_NAME"
    fi
    if ! grep -q "^$CLUSTER_NAME|$SLURM_ACCOUNT|" <<<"$assoc"; then
        sacctmgr -i add account "$SLURM_ACCOUNT" Cluster="$CLUSTER_NAME" \
            Description="dask gateway users" Organization=dev >/dev/null ||
            die "sacctmgr add account $SLURM_ACCOUNT failed"
        log "added account $SLURM_ACCOUNT"
    fi
    missing=()
    for u in "${DASK_USERS[@]}" "${OTHER_USERS[@]}" "${LOAD_USERS[@]}" "${BENCH_USERS[@]}" \
        "$SERVICE_USER"; do
        grep -qx "$CLUSTER_NAME|$SLURM_ACCOUNT|$u" <<<"$assoc" || missing+=("$u")
    done
    if ((${#missing[@]})); then
        sacctmgr -i add user "$(join_by , "${missing[@]}")" Account="$SLURM_ACCOUNT" \
            DefaultAccount="$SLURM_ACCOUNT" Cluster="$CLUSTER_NAME" >/dev/null ||
            die "sacctmgr add user ${missing[*]} failed"
        log "added users ${missing[*]} to account $SLURM_ACCOUNT"
    fi
}

start_slurmctld() {
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        ctld_ok && return 0
        warn "slurmctld runs but does not answer; restarting it"
        stop_daemons slurmctld "$RUN_DIR/slurmctld.pid" slurmctld
    fi
    prepare_log "$LOG_DIR/slurmctld.log" slurm:slurm
    slurmctld || { tail_log "$LOG_DIR/slurmctld.log"; die "slurmctld failed to start"; }
    wait_for 60 "slurmctld to answer" "$LOG_DIR/slurmctld.log" ctld_ok
    log "slurmctld up"
}

prepare_slurmd() {
    local node=$1
    install -d -o root -g root -m 0755 "$SPOOL_BASE/$node"
    prepare_log "$LOG_DIR/slurmd-$node.log" root:root
}

start_slurmd() {
    local node=$1
    pid_alive "$RUN_DIR/slurmd-$node.pid" slurmd && return 0
    prepare_slurmd "$node"
    slurmd -N "$node" || { tail_log "$LOG_DIR/slurmd-$node.log"; die "slurmd -N $node failed to start"; }
}

# Wait until every node is usable; resume nodes left down/drained (e.g. by a
# test, or a previous run) once their slurmd responds.
nodes_ready() {
    local node state bad=0 nodes_csv
    nodes_csv=$(join_by , "${NODES[@]}")
    while read -r node state; do
        [[ -n $node ]] || continue
        case $state in
        idle | mixed | allocated | completing) ;;
        *'*' | *'~' | *'#' | unknown) bad=1 ;; # not (yet) responding / powering: wait
        down | drained | draining | drain | fail | failing)
            bad=1
            if [[ " $RESUMED " != *" $node "* ]]; then
                log "node $node is $state; resuming it"
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                RESUMED+=" $node"
            fi
            ;;
        *) bad=1 ;;
        esac
    done < <(timeout 10 sinfo -h -N -n "$nodes_csv" -o '%N %T' 2>/dev/null | sort -u)
    ((bad == 0)) && [[ -n $(timeout 10 sinfo -h -N -n "$nodes_csv" -o '%N' 2>/dev/null) ]]
}

wait_nodes_ready() {
    local node logs=()
    RESUMED=""
    for node in "${NODES[@]}"; do logs+=("$LOG_DIR/slurmd-$node.log"); done
    local deadline=$((SECONDS + 90))
    until nodes_ready; do
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            tail_log "${logs[@]}" "$LOG_DIR/slurmctld.log"
            die "timed out after 90s waiting for nodes ${NODES[*]} to become idle"
        fi
        sleep 0.3
    done
}

stop_slurm_daemons() {
    local node args=()
    for node in "${NODES[@]}"; do
        args+=("slurmd $node" "$RUN_DIR/slurmd-$node.pid" slurmd)
    done
    stop_daemons "${args[@]}" slurmctld "$RUN_DIR/slurmctld.pid" slurmctld
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------
cmd_prepare() {
    install_packages
    create_users
    install_sudoers
    create_dirs
    create_slurm_dirs
}

cmd_up() {
    [[ $SLURM_LAYOUT == single ]] || die "'up' is the single-host layout; use 'role ...' with SLURM_LAYOUT=$SLURM_LAYOUT"
    local t0 t1 node
    t0=$(now)
    cmd_prepare
    setup_munge
    start_munge
    setup_mariadb
    start_mariadb
    setup_slurm_db
    write_slurm_conf
    write_slurmdbd_conf
    if ((SLURM_CONF_CHANGED)); then
        # Node/partition changes need a restart of slurmctld and the slurmds.
        stop_slurm_daemons
    fi
    start_slurmdbd
    ensure_accounting
    start_slurmctld
    for node in "${NODES[@]}"; do start_slurmd "$node"; done
    wait_nodes_ready
    t1=$(now)
    local cg="cgroup/v1"
    ((CGROUP_ACTIVE)) || cg="no cgroups (fallback)"
    printf 'dev-cluster up in %.1fs: cluster %s, slurmctld %s:6817, slurmdbd %s:6819 (MariaDB 127.0.0.1:3306), nodes %s up, partitions workers=%s schedulers=%s, %s, users %s in %s, %s not, service account %s\n' \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" "$CLUSTER_NAME" "${CONTROLLER_ADDR:-$CONTROLLER_HOST}" \
        "$DBD_HOST" "$(join_by , "${NODES[@]}")" "$(join_by , "${NODES[@]}")" "$(join_by , "${SCHEDULER_NODES[@]}")" \
        "$cg" "$(join_by , "${DASK_USERS[@]}")" "$DASK_GROUP" "$(join_by , "${OTHER_USERS[@]}")" "$SERVICE_USER"
}

stop_started_daemons() {
    stop_slurm_daemons
    stop_daemons slurmdbd "$RUN_DIR/slurmdbd.pid" slurmdbd
    # MariaDB and munged only after everything that uses them.
    stop_daemons mariadb "$RUN_DIR/mariadb.pid" mariadbd munged "$RUN_DIR/munged.pid" munged
}

cmd_down() {
    stop_started_daemons
    log "dev-cluster down (packages, users and configuration left in place)"
}

# ---------------------------------------------------------------------------
# purge: back to a fresh machine, for everything this project creates (packages stay)
# ---------------------------------------------------------------------------
# Daemons stopped wherever they come from (the state they use is removed).
PURGE_DAEMONS=(slurmctld slurmd slurmdbd munged mariadbd)
PURGED=0

purged() {
    printf '[dev-cluster] purge: removed %s\n' "$*" >&2
    PURGED=$((PURGED + 1))
}

# purge_path PATH...: remove each PATH that exists (file, link or whole directory).
purge_path() {
    local p
    for p in "$@"; do
        if [[ -e $p || -L $p ]]; then
            rm -rf -- "$p"
            purged "$p"
        fi
    done
}

# purge_unpackaged DIR: remove everything under DIR that no Debian package owns,
# keeping the directories the packages ship (e.g. /var/lib/slurm/slurmctld, emptied).
purge_unpackaged() {
    local dir=$1 p
    [[ -d $dir && ! -L $dir ]] || return 0
    if ! dpkg-query -S "$dir" >/dev/null 2>&1; then
        purge_path "$dir"
        return 0
    fi
    for p in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
        [[ -e $p || -L $p ]] || continue
        if ! dpkg-query -S "$p" >/dev/null 2>&1; then
            purge_path "$p"
        elif [[ -d $p && ! -L $p ]]; then
            purge_unpackaged "$p"
        fi
    done
}

# purge_pids DAEMONS UID...: pids of the live (not zombie) processes to stop: the
# gateway (slurm-gateway, also under runuser), the dev JupyterHub and its proxy (run from
# /opt/slurm-gateway/hub, as root), every process of the uids given,
# slurmstepd (the users' jobs), and with DAEMONS=1 the daemons of PURGE_DAEMONS.
purge_pids() {
    local daemons=$1 d pid comm key real eff state argv
    shift
    local uids=" $* " comms=" slurm-gateway slurmstepd "
    ((daemons)) && comms+="${PURGE_DAEMONS[*]} "
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        ((pid != $$ && pid != BASHPID)) || continue
        real='' eff='' state=''
        {
            read -r comm <"$d/comm" &&
                mapfile -d '' -t argv <"$d/cmdline" &&
                while read -r key real eff _; do
                    case $key in
                    State:) state=$real ;;
                    Uid:) break ;;
                    esac
                done <"$d/status"
        } 2>/dev/null || continue # gone meanwhile
        [[ $state != Z ]] || continue
        if [[ $comms == *" $comm "* || " ${argv[*]} " == *" /opt/slurm-gateway/venv/bin/slurm-gateway "* ]] ||
            [[ " ${argv[*]} " == *" /opt/slurm-gateway/hub/"* ]] || # scripts/jupyterhub.sh's hub, proxy
            [[ $uids != "  " && ($uids == *" $real "* || $uids == *" $eff "*) ]]; then
            printf '%s\n' "$pid"
        fi
    done
}

# purge_kill DAEMONS UID...: SIGTERM the processes of purge_pids, SIGKILL the
# ones left after 15 s.
purge_kill() {
    local pids pid n
    mapfile -t pids < <(purge_pids "$@")
    ((${#pids[@]} > 0)) || return 0
    for pid in "${pids[@]}"; do
        log "purge: stopping $(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((n = 0; n < 75; n++)); do
        mapfile -t pids < <(purge_pids "$@")
        ((${#pids[@]} > 0)) || return 0
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        warn "purge: $(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid) ignored SIGTERM for 15s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ((n = 0; n < 25; n++)); do
        mapfile -t pids < <(purge_pids "$@")
        ((${#pids[@]} > 0)) || return 0
        sleep 0.2
    done
    die "purge: processes still alive after SIGKILL: ${pids[*]}"
}

# purge_user NAME: the account, its group of the same name, its home (if it is
# /home/NAME, or the service account's), its mail spool and its files on top of
# /tmp, /var/tmp and /dev/shm (e.g. the slurm-JOBID.out of a job run in /tmp).
purge_user() {
    local u=$1 home f
    if id -u "$u" >/dev/null 2>&1; then
        home=$(getent passwd "$u" | cut -d: -f6)
        while IFS= read -r -d '' f; do
            purge_path "$f"
        done < <(find /tmp /var/tmp /dev/shm -xdev -mindepth 1 -maxdepth 1 -user "$u" -print0 2>/dev/null)
        if ! userdel "$u" 2>/dev/null; then
            warn "purge: userdel $u refused; forcing it"
            userdel --force "$u"
        fi
        purged "user $u"
        if [[ $home == "/home/$u" || ($u == "$SERVICE_USER" && $home == "$SERVICE_HOME") ]]; then
            purge_path "$home"
        fi
    fi
    if getent group "$u" >/dev/null; then
        groupdel "$u"
        purged "group $u"
    fi
    purge_path "/var/mail/$u"
}

cmd_purge() {
    local u users uids=() cg d
    users=("${DASK_USERS[@]}" "${OTHER_USERS[@]}" "${LOAD_USERS[@]}" "${BENCH_USERS[@]}" "$SERVICE_USER")
    PURGED=0
    # 1. Processes: the gateway, the users' processes and their jobs (slurmstepd);
    #    then the daemons this script started, in order; then any such daemon left.
    for u in "${users[@]}"; do
        if id -u "$u" >/dev/null 2>&1; then uids+=("$(id -u "$u")"); fi
    done
    # The loopback login node of the SSH transport tests (scripts/sshd.sh), sessions included.
    if [[ -f $SCRIPT_DIR/sshd.sh ]]; then bash "$SCRIPT_DIR/sshd.sh" purge; fi
    purge_kill 0 "${uids[@]}"
    stop_started_daemons
    purge_kill 1
    # --- PostgreSQL (scripts/postgres.sh): the project's instance, its data, config, socket.
    if [[ -e /var/lib/slurm-gateway-postgres || -e /run/slurm-gateway-postgres ]]; then
        bash "$SCRIPT_DIR/postgres.sh" purge && purged "PostgreSQL instance (scripts/postgres.sh)"
    fi
    # --- end PostgreSQL
    # The jobs' cgroups (cgroup v1), empty now: the kernel refuses to remove others.
    for cg in /sys/fs/cgroup/*/slurm /sys/fs/cgroup/*/slurm_* /sys/fs/cgroup/*/slurm-gateway-dev-probe.*; do
        [[ -d $cg ]] || continue
        while IFS= read -r d; do
            rmdir "$d" 2>/dev/null || warn "purge: cannot remove cgroup $d"
        done < <(find "$cg" -depth -type d 2>/dev/null)
        [[ -d $cg ]] || purged "cgroup $cg"
    done

    # 2. Users and groups (Slurm's accounting records go with MariaDB's data below).
    for u in "${users[@]}"; do
        purge_user "$u"
    done
    if getent group "$DASK_GROUP" >/dev/null; then
        groupdel "$DASK_GROUP"
        purged "group $DASK_GROUP"
    fi

    # 3. Files: the sudo rule; the gateway's, the demo's and the tests'; Slurm's
    #    configuration, state and logs; the munge key and munged's seed; MariaDB's data
    #    (slurm_acct_db and its user). Directories the Debian packages ship stay.
    purge_path "$SUDOERS_FILE" "$SUDOERS_FILE".?????? "$BENCH_SUDOERS_FILE"
    purge_path /depot /opt/slurm-gateway "$SERVICE_HOME" /var/log/slurm-gateway /etc/slurm-gateway-dev-sshd \
        /etc/slurm-gateway /etc/dask/gateway.yaml /run/slurm-gateway* \
        /var/log/slurm-gateway-service.log /var/log/slurm-gateway-proxy.log \
        /tmp/slurm-gateway-* /tmp/dask-gateway.*
    if [[ -d /etc/dask ]] && rmdir /etc/dask 2>/dev/null; then purged /etc/dask; fi
    purge_path "$SLURM_CONF_FILE" "$CGROUP_CONF_FILE" "$SLURMDBD_CONF_FILE" "$MUNGE_KEY"
    for d in "$SLURM_ETC" /var/lib/slurm "$LOG_DIR" "$(dirname "$MUNGE_KEY")" /var/lib/munge /var/log/munge; do
        purge_unpackaged "$d"
    done
    purge_path "$MYSQL_DATADIR" /run/mysqld /run/munge
    # apt's guard, if an interrupted install_packages left it behind.
    if [[ -f /usr/sbin/policy-rc.d && "$(</usr/sbin/policy-rc.d)" == $'#!/bin/sh\nexit 101' ]]; then
        purge_path /usr/sbin/policy-rc.d
    fi

    if ((PURGED)); then
        log "purge: done, $PURGED items removed (Debian packages stay installed)"
    else
        log "purge: nothing to remove"
    fi
}

daemon_status() {
    local name=$1 f=$2 comm=$3
    if pid_alive "$f" "$comm"; then
        printf '  %-12s up (pid %s)\n' "$name" "$(pid_of "$f")"
        return 0
    fi
    printf '  %-12s down\n' "$name"
    return 1
}

cmd_status() {
    local rc=0 node
    echo "daemons started by dev-cluster.sh (pid files in $RUN_DIR):"
    if ! daemon_status munged "$RUN_DIR/munged.pid" munged; then
        munge_ok && echo "               (a munged not started by this script answers)"
        munge_ok || rc=3
    fi
    if ! daemon_status mariadb "$RUN_DIR/mariadb.pid" mariadbd; then
        if mariadb_ok >/dev/null 2>&1; then
            echo "               (a MariaDB not started by this script answers)"
        fi
    fi
    daemon_status slurmdbd "$RUN_DIR/slurmdbd.pid" slurmdbd || rc=3
    daemon_status slurmctld "$RUN_DIR/slurmctld.pid" slurmctld || rc=3
    for node in "${NODES[@]}"; do
        daemon_status "slurmd $node" "$RUN_DIR/slurmd-$node.pid" slurmd || rc=3
    done
    echo
    if [[ -r $SLURM_CONF_FILE ]] && ctld_ok >/dev/null 2>&1; then
        sinfo
        echo
        sinfo -N -o '%N %P %T %c %m %E'
    else
        echo "slurmctld is not answering; no sinfo"
        rc=3
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# Roles: one component per container, in the foreground.
# ---------------------------------------------------------------------------
role_config() {
    install_packages
    create_slurm_dirs
    setup_munge
    write_slurm_conf
    log "configuration written to $SLURM_ETC and $MUNGE_KEY"
}

role_dbd() {
    create_slurm_dirs
    start_munge
    setup_mariadb
    start_mariadb
    setup_slurm_db
    write_slurmdbd_conf
    prepare_log "$LOG_DIR/slurmdbd.log" slurm:slurm
    slurmdbd -D &
    local pid=$!
    trap 'kill -TERM $pid 2>/dev/null; wait $pid; stop_daemons mariadb "$RUN_DIR/mariadb.pid" mariadbd; exit 0' TERM INT
    wait_for 120 "slurmdbd to answer" "$LOG_DIR/slurmdbd.log" dbd_ok
    ensure_accounting
    log "slurmdbd ready"
    local rc=0
    wait "$pid" || rc=$?
    stop_daemons mariadb "$RUN_DIR/mariadb.pid" mariadbd
    exit "$rc"
}

cluster_registered() { timeout 10 sacctmgr -nP list cluster format=cluster | grep -qx "$CLUSTER_NAME"; }

role_controller() {
    create_slurm_dirs
    start_munge
    wait_for 180 "slurmdbd at $DBD_HOST with cluster $CLUSTER_NAME registered" /dev/null cluster_registered
    prepare_log "$LOG_DIR/slurmctld.log" slurm:slurm
    exec slurmctld -D
}

role_compute() {
    local node=${1:-}
    [[ -n $node ]] || die "usage: $0 role compute NODE"
    create_slurm_dirs
    start_munge
    wait_for 180 "slurmctld at $CONTROLLER_HOST" /dev/null ctld_ok
    prepare_slurmd "$node"
    exec slurmd -D -N "$node"
}

role_gateway() {
    local cmd=${SLURM_GATEWAY_CMD:-slurm-gateway}
    create_slurm_dirs
    create_dirs
    start_munge
    wait_for 180 "slurmctld at $CONTROLLER_HOST" /dev/null ctld_ok
    log "starting as $SERVICE_USER: $cmd"
    # shellcheck disable=SC2086 # the command is a word list on purpose
    exec runuser -u "$SERVICE_USER" -- $cmd
}

cmd_role() {
    local role=${1:-}
    shift || true
    require_root
    case $role in
    config) role_config ;;
    dbd) role_dbd ;;
    controller) role_controller ;;
    compute) role_compute "$@" ;;
    gateway) role_gateway ;;
    *) die "usage: $0 role config|dbd|controller|compute NODE|gateway" ;;
    esac
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    up) require_root; cmd_up ;;
    down) require_root; cmd_down ;;
    purge) require_root; cmd_purge ;;
    status) cmd_status ;;
    prepare) require_root; cmd_prepare ;;
    role) cmd_role "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

# Sourcing the file (e.g. to reuse one function) does not run anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
