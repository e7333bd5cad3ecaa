#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests and for trying
# `snakemake --profile slurm` without a real cluster.
#
#   scripts/slurm-cluster.sh start    install (Debian packages) + configure + start, wait for idle
#   scripts/slurm-cluster.sh stop     stop the daemons (by their PIDs)
#   scripts/slurm-cluster.sh status   say which daemons run; exit 0 only when the node is usable
#
# Daemons: munged, MariaDB (mysqld_safe), slurmdbd (accounting, so `sacct` works),
# slurmctld and slurmd; one node (this host, >= 4 CPUs, >= 32 GB declared, 2 pretend GPUs)
# in one partition `debug`.
# Needs root: it writes /etc/slurm, creates a MariaDB database and runs the daemons as root.
# `start` and `stop` are idempotent. State, logs and PID files live in $STATE_DIR.
set -euo pipefail

STATE_DIR=${DIFFOBJ_SLURM_STATE_DIR:-/var/lib/diffobj-slurm}
CLUSTER=${DIFFOBJ_SLURM_CLUSTER:-diffobj}
PARTITION=debug
SLURM_ETC=/etc/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmdbpass # local socket only; the database holds nothing but job accounting
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MIN_CPUS=${DIFFOBJ_SLURM_MIN_CPUS:-4}
MEMORY_MB=${DIFFOBJ_SLURM_MEMORY_MB:-32768}
FAKE_GPUS=${DIFFOBJ_SLURM_FAKE_GPUS:-2}
START_TIMEOUT_S=${DIFFOBJ_SLURM_START_TIMEOUT_S:-90}

MUNGE_PID=/run/munge/munged.pid
MYSQLD_SAFE_PID=$STATE_DIR/mysqld_safe.pid
MYSQLD_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=$STATE_DIR/slurmdbd.pid
SLURMCTLD_PID=$STATE_DIR/slurmctld.pid
SLURMD_PID=$STATE_DIR/slurmd.pid

log() { echo "slurm-cluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---- helpers ---------------------------------------------------------------------------

pid_alive() { # pid_alive PIDFILE: the process named in PIDFILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
    local timeout_s=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${timeout_s}s waiting for $what (logs: $STATE_DIR/*.log)"
        sleep 0.5
    done
}

stop_pidfile() { # stop_pidfile NAME PIDFILE: TERM, wait, then KILL the process in PIDFILE
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || {
        rm -f "$pidfile"
        return 0
    }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

node_state() { sinfo --noheader --partition="$PARTITION" --format=%t 2>/dev/null | head -n1; }
node_idle() { [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]; }

# ---- installation and configuration ----------------------------------------------------

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mysqld_safe >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

make_fake_gpus() {
    # slurmd counts GPUs by their device files; character devices 1,3 behave as /dev/null
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -e /dev/diffobj-fakegpu$i ]] && continue
        if ! mknod /dev/diffobj-fakegpu$i c 1 3 2>/dev/null; then
            log "cannot create /dev/diffobj-fakegpu$i (mknod): the node gets no GPUs"
            FAKE_GPUS=0
            return
        fi
    done
}

write_slurm_conf() {
    local host cpus real_mb mem_mb node_line
    host=$(hostname -s)
    # The node declares at least MIN_CPUS CPUs and MEMORY_MB of memory (config_overrides lets
    # slurmd accept more than the machine has; nothing binds CPUs or enforces memory here),
    # so that rules sized for a real cluster are scheduled and a few jobs run side by side.
    cpus=$(nproc)
    ((cpus < MIN_CPUS)) && cpus=$MIN_CPUS
    real_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem_mb=$((real_mb * 9 / 10 > MEMORY_MB ? real_mb * 9 / 10 : MEMORY_MB))
    node_line="NodeName=$host CPUs=$cpus RealMemory=$mem_mb"
    mkdir -p "$SLURM_ETC"
    cat >"$SLURM_ETC/slurm.conf" <<EOF
# Written by scripts/slurm-cluster.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# Short waits keep the tests fast: SIGTERM -> SIGKILL 5 s after the walltime; a requeued
# job may start again after cred_expire + 1 s (default 120 s); the scheduler looks at
# pending jobs every 5 s (default 60 s).
KillWait=5
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5
MinJobAge=60
# Pretend GPUs (device files that are /dev/null) so that rules asking for gpu=N are
# scheduled here too; their commands find no CUDA device and run on the CPU.
GresTypes=gpu
AccountingStorageTRES=gres/gpu
$node_line$( ((FAKE_GPUS > 0)) && echo " Gres=gpu:$FAKE_GPUS") State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE DefMemPerCPU=512 State=UP
EOF
    make_fake_gpus
    if ((FAKE_GPUS > 0)); then
        echo "Name=gpu File=/dev/diffobj-fakegpu[0-$((FAKE_GPUS - 1))]" >"$SLURM_ETC/gres.conf"
    else
        : >"$SLURM_ETC/gres.conf"
    fi
    cat >"$SLURM_ETC/slurmdbd.conf" <<EOF
# Written by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$SLURMDBD_PID
LogFile=$STATE_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    chmod 600 "$SLURM_ETC/slurmdbd.conf" # slurmdbd refuses a readable file (it holds a password)
}

# ---- daemons -----------------------------------------------------------------------------

start_munge() {
    pid_alive "$MUNGE_PID" && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged --force
    wait_for 10 munged munge -n
    log "munged running (pid $(cat "$MUNGE_PID"))"
}

start_mariadb() {
    if ! pid_alive "$MYSQLD_PID"; then
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
        nohup mysqld_safe --pid-file="$MYSQLD_PID" >"$STATE_DIR/mysqld_safe.log" 2>&1 &
        echo $! >"$MYSQLD_SAFE_PID"
        wait_for 60 MariaDB mysqladmin ping
        log "MariaDB running (pid $(cat "$MYSQLD_PID"))"
    fi
    mariadb <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if ! pid_alive "$SLURMDBD_PID"; then
        slurmdbd
        wait_for 30 slurmdbd sacctmgr --noheader list cluster
        log "slurmdbd running (pid $(cat "$SLURMDBD_PID"))"
    fi
    if [[ -z $(sacctmgr --noheader --parsable2 list cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurm() {
    if ! pid_alive "$SLURMCTLD_PID"; then
        slurmctld
        wait_for 30 slurmctld scontrol ping
        wait_for 10 slurmctld pid_alive "$SLURMCTLD_PID"
        log "slurmctld running (pid $(cat "$SLURMCTLD_PID"))"
    fi
    if ! pid_alive "$SLURMD_PID"; then
        slurmd
        wait_for 10 slurmd pid_alive "$SLURMD_PID"
        log "slurmd running (pid $(cat "$SLURMD_PID"))"
    fi
    local deadline=$((SECONDS + START_TIMEOUT_S)) state
    until node_idle; do
        state=$(node_state)
        # A node left down/drained by an earlier run (or an unclean stop) comes back on resume.
        if [[ $state =~ ^(down|drain|drng|fail)\*?$ ]]; then
            scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        fi
        ((SECONDS < deadline)) || die "node not idle after ${START_TIMEOUT_S}s (state '$state'; see $STATE_DIR/slurmd.log)"
        sleep 0.5
    done
}

# ---- commands ----------------------------------------------------------------------------

cmd_start() {
    [[ $(id -u) == 0 ]] || die "needs root (it installs packages, writes /etc/slurm and runs the daemons)"
    local t0=$SECONDS
    install_packages
    mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    write_slurm_conf
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "cluster '$CLUSTER' up in $((SECONDS - t0)) s: partition $PARTITION, node $(hostname -s) $(node_state)"
}

cmd_stop() {
    [[ $(id -u) == 0 ]] || die "needs root"
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$SLURMCTLD_PID"
    stop_pidfile slurmdbd "$SLURMDBD_PID"
    stop_pidfile mysqld "$MYSQLD_PID" # a clean shutdown: mysqld_safe then exits by itself
    stop_pidfile mysqld_safe "$MYSQLD_SAFE_PID"
    stop_pidfile munged "$MUNGE_PID"
}

cmd_status() {
    local name pidfile ok=0
    for name in munged:$MUNGE_PID mysqld:$MYSQLD_PID slurmdbd:$SLURMDBD_PID \
        slurmctld:$SLURMCTLD_PID slurmd:$SLURMD_PID; do
        pidfile=${name#*:}
        if pid_alive "$pidfile"; then
            echo "${name%%:*}: running (pid $(cat "$pidfile"))"
        else
            echo "${name%%:*}: stopped"
            ok=1
        fi
    done
    if node_idle; then
        sinfo
    else
        echo "node: not usable (state '$(node_state)')"
        ok=1
    fi
    return $ok
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
