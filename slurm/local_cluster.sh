#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the sbatch scripts.
#
#   slurm/local_cluster.sh start    # prints the line to export: SLURM_CONF=...
#   slurm/local_cluster.sh status
#   slurm/local_cluster.sh stop     # cancels its jobs, stops the daemons, deletes its state
#
# Needs Debian's slurm-wlm and munge packages (`make slurm-packages` installs them) and root,
# because slurmd starts job steps as the submitting user. Everything (munge key and socket,
# slurm.conf, state, spool, logs) lives in $SASA_SLURM_DIR, by default a folder under $TMPDIR;
# nothing under /etc is touched. The node is this machine with all its CPUs and no GPUs.
# Ports: $SASA_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

DIR="${SASA_SLURM_DIR:-${TMPDIR:-/tmp}/sasa-slurm-$(id -un)}"
CONF="$DIR/slurm.conf"
PORT="${SASA_SLURM_PORT:-6817}"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up within the time limit; logs in $DIR/log"
        sleep 0.5
    done
}

node_idle() { [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ]; }

write_config() {
    cat >"$CONF" <<EOF
ClusterName=sasa-local
SlurmctldHost=$NODE
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may only start again once its previous run's credential has
# expired (before that, slurmd refuses the launch as revoked and the job fails). Clusters keep
# the default 120 s; here 10 s, so a preempted job restarts within seconds.
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups: processes are tracked by parent id, and tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Seconds between the SIGTERM and the SIGKILL that end a cancelled or requeued job.
KillWait=10
NodeName=$NODE CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null \
        || die "slurm-wlm and munge are not installed (make slurm-packages, or apt-get install slurm-wlm munge)"
    [ "$(id -u)" -eq 0 ] || die "run as root: slurmd starts job steps as the user who submitted them"
    if running slurmctld; then
        echo "already running; export SLURM_CONF=$CONF"
        return
    fi
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 700 "$DIR/munge"
    # A fresh key per cluster; munged insists that only its owner can read it.
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 10 munged test -S "$DIR/munge/munge.socket"
    write_config
    slurmctld -i
    slurmd
    wait_for 60 "the node" node_idle
    echo "export SLURM_CONF=$CONF"
}

stop() {
    if running slurmctld; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        # Give the jobs' processes the time to end (KillWait), then stop the daemons.
        local deadline=$((SECONDS + 20))
        while [ -n "$(squeue -h 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    fi
    for daemon in slurmd slurmctld munged; do
        if running "$daemon"; then kill "$(cat "$DIR/$daemon.pid")"; fi
    done
    for daemon in slurmd slurmctld munged; do
        local deadline=$((SECONDS + 10))
        while running "$daemon" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if running "$daemon"; then kill -9 "$(cat "$DIR/$daemon.pid")"; fi
    done
    rm -rf "$DIR"
    echo "stopped"
}

status() {
    if ! running slurmctld; then
        echo "not running ($DIR)"
        return 3
    fi
    echo "export SLURM_CONF=$CONF"
    sinfo
    squeue
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status (state in \$SASA_SLURM_DIR, now $DIR)" ;;
esac
