#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + munge) for the tests.
#
#   tests/slurm/cluster.sh start    install if needed, start, wait until the node is idle
#   tests/slurm/cluster.sh stop     cancel jobs, stop slurmd/slurmctld (and munged if we started it)
#   tests/slurm/cluster.sh status   print sinfo/squeue; exit 0 if the node is idle/mix/alloc/comp
#   tests/slurm/cluster.sh env      print `export SLURM_CONF=...` when clients need it (else nothing)
#
# Exit status: 0 ok; 1 failed (logs printed); 2 usage; 3 this machine cannot run a
# cluster (one-line reason on stderr: tests skip with it).
#
# Everything (state, spool, logs, pid files, job completion log, a copy of slurm.conf)
# lives in ${IRL_SLURM_DIR:-/tmp/irl-slurm}. The config is also written to
# /etc/slurm/slurm.conf, the clients' default, unless that file exists and was not
# written by this script; then clients need SLURM_CONF (see `env`).
# Node "localhost": CPUs=${IRL_SLURM_CPUS:-8} (more than the real cores; allowed by
# SlurmdParameters=config_overrides), partition "debug".
# Other knobs: IRL_SLURM_WAIT (s to wait for an idle node, default 60),
# IRL_SLURM_CRED_EXPIRE (AuthInfo cred_expire, default 5 = the minimum; see below).
set -euo pipefail

DIR=${IRL_SLURM_DIR:-/tmp/irl-slurm}
CPUS=${IRL_SLURM_CPUS:-8}
WAIT=${IRL_SLURM_WAIT:-60}
MARK="# written by ir-lightning tests/slurm/cluster.sh"
ETC_CONF=/etc/slurm/slurm.conf
SCRATCH_CONF=$DIR/slurm.conf
PATH=$PATH:/usr/sbin:/sbin
export PATH

log() { echo "cluster.sh: $*" >&2; }
cannot() { log "cannot run a local SLURM cluster: $*"; exit 3; }

# Which file the clients read: /etc/slurm/slurm.conf if it is ours (or absent and we
# may create it), else the scratch copy through SLURM_CONF.
client_conf() {
    if [[ -f $ETC_CONF ]]; then
        if head -n 1 "$ETC_CONF" 2>/dev/null | grep -qxF "$MARK"; then
            echo "$ETC_CONF"; return
        fi
        echo "$SCRATCH_CONF"; return
    fi
    if [[ $(id -u) -eq 0 ]]; then echo "$ETC_CONF"; else echo "$SCRATCH_CONF"; fi
}

# Run a client command against our config.
sl() { SLURM_CONF=$SCRATCH_CONF "$@"; }

pid_alive() {  # pid_alive FILE -> 0 if the pid in FILE is a live process
    local pid
    [[ -s $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    # /proc, not kill -0: a non-root caller may check root's daemons; and a killed
    # daemon may linger as a zombie until init reaps it.
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/stat ]] || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != [ZX] ]]
}

munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

node_state() { sl timeout 10 sinfo -h -N -o %t 2>/dev/null | head -n 1 || true; }

state_good() {  # the node accepts work
    case $1 in idle | mix | alloc | comp) return 0 ;; *) return 1 ;; esac
}

have_packages() {
    command -v sbatch >/dev/null && command -v slurmctld >/dev/null &&
        command -v slurmd >/dev/null && command -v munged >/dev/null
}

install_packages() {
    have_packages && return 0
    [[ $(id -u) -eq 0 ]] || cannot "slurm/munge are not installed and we are not root"
    command -v apt-get >/dev/null || cannot "slurm/munge are not installed and there is no apt-get"
    local pkgs=(slurmd slurmctld slurm-client munge) t0=$SECONDS
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$DIR/apt.log" 2>&1 9>&-; then
        log "apt-get install failed; running apt-get update and retrying"
        if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } \
            >>"$DIR/apt.log" 2>&1 9>&-; then
            cannot "apt-get install ${pkgs[*]} failed (see $DIR/apt.log: $(tail -n 1 "$DIR/apt.log"))"
        fi
    fi
    have_packages || cannot "packages installed but sbatch/slurmctld/slurmd/munged still missing"
    log "installed in $((SECONDS - t0)) s"
}

start_munge() {
    if munge_ok; then
        pid_alive "$DIR/munged.pid" || rm -f "$DIR/munged.pid" # forget a munged of ours that died
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || cannot "munged is not running and we are not root"
    id munge >/dev/null 2>&1 || cannot "no 'munge' user (munge package broken?)"
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    # A previous munged that died leaves its socket behind: --force starts anyway.
    # 9>&-: the daemons must not inherit (and so keep holding) our lock.
    runuser -u munge -- munged --force --pid-file=/run/munge/munged.pid 9>&-
    local i
    for i in $(seq 50); do
        if munge_ok; then
            cp /run/munge/munged.pid "$DIR/munged.pid" # stop ends only a munged we started
            return 0
        fi
        sleep 0.1
    done
    log "munged started but 'munge -n | unmunge' fails"
    tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
    exit 1
}

write_conf() {  # prints the config to stdout
    local mem_kb mem_mb
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$((mem_kb / 1024))
    # Leave 10 % (at least 512 MB) for the system.
    mem_mb=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
    ((mem_mb >= 256)) || mem_mb=256
    cat <<EOF
$MARK
# scratch dir: $DIR   (do not edit; regenerated by \`cluster.sh start\`)
ClusterName=irl
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may not start again before its old credential expires:
# cred_expire (default 120 s, minimum 5) sets both the credential lifetime and that
# delay (requeue -> RUNNING measured: ~31 s with 30, ~11 s with 10, ~6 s with 5).
# batch_sched_delay=0 and 1-s scheduler/backfill passes: a job starts <= ~1 s after sbatch.
AuthInfo=cred_expire=${IRL_SLURM_CRED_EXPIRE:-5}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

show_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [[ -f $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 25 "$f" >&2
    done
}

kill_pidfile() {  # kill_pidfile FILE [PATIENCE_S]: TERM, wait (default 10 s), then KILL
    local f=$1 patience=${2:-10} pid i
    if pid_alive "$f"; then
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < patience * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ($f) still there ${patience} s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$f"
}

stop_daemons() {
    local jobs i
    if pid_alive "$DIR/run/slurmctld.pid"; then
        jobs=$(sl timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            sl timeout 10 scancel $jobs 2>/dev/null || true
            for i in $(seq 50); do  # up to 10 s for the steps to end
                [[ -z $(sl timeout 5 squeue -h -o %A 2>/dev/null || true) ]] && break
                sleep 0.2
            done
        fi
    fi
    if pid_alive "$DIR/run/slurmctld.pid"; then
        kill_pidfile "$DIR/run/slurmd.pid"
    else
        # Without its controller slurmd spends ~10 s trying to say goodbye to it.
        kill_pidfile "$DIR/run/slurmd.pid" 1
    fi
    kill_pidfile "$DIR/run/slurmctld.pid"
}

healthy() {  # daemons alive, config current, munge works, node accepts work
    local i
    pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" || return 1
    [[ -f $SCRATCH_CONF ]] && cmp -s "$SCRATCH_CONF" <(write_conf) || return 1
    munge_ok || return 1
    # Daemons up: give a node that is still registering (or otherwise in flux) 10 s
    # before calling it broken.
    for i in $(seq 20); do
        state_good "$(node_state)" && return 0
        sleep 0.5
    done
    return 1
}

cmd_start() {
    local t0=$SECONDS st i conf f
    if healthy; then return 0; fi # read-only: any user may ask
    if [[ $(id -u) -ne 0 ]]; then
        have_packages || cannot "slurm/munge are not installed and we are not root"
        cannot "the cluster is not running (or not healthy) and starting it needs root"
    fi
    mkdir -p "$DIR"
    exec 9>>"$DIR/.lock"
    flock -w 120 9 || { log "timed out waiting for $DIR/.lock"; exit 1; }
    if healthy; then return 0; fi # started by another caller while we waited
    install_packages
    start_munge

    # Whatever is left from an earlier run (half-started, crashed, old config) goes.
    stop_daemons
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    for f in "$DIR"/log/*.log; do
        if [[ -f $f ]]; then mv -f "$f" "$f.old"; fi
    done
    write_conf >"$SCRATCH_CONF"
    chmod 0644 "$SCRATCH_CONF"
    conf=$(client_conf)
    if [[ $conf == "$ETC_CONF" ]]; then
        mkdir -p /etc/slurm
        cp "$SCRATCH_CONF" "$ETC_CONF.tmp.$$" && mv -f "$ETC_CONF.tmp.$$" "$ETC_CONF"
    fi

    if sl timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
        log "a slurmctld not started from $DIR already answers on localhost (stale scratch dir?): $(pgrep -a slurmctld | head -n 3 | tr '\n' ' ')"
        exit 1
    fi
    slurmctld -f "$SCRATCH_CONF" 9>&- || { log "slurmctld failed to start"; show_logs; exit 1; }
    slurmd -f "$SCRATCH_CONF" -N localhost 9>&- || { log "slurmd failed to start"; show_logs; exit 1; }

    for ((i = 0; i < WAIT * 5; i++)); do
        st=$(node_state)
        if [[ $st == idle ]]; then
            log "cluster up in $((SECONDS - t0)) s (node localhost: $CPUS CPUs, partition debug; conf $conf)"
            return 0
        fi
        if ((i > 10)) && ! { pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid"; }; then
            log "a daemon exited during start-up"
            break
        fi
        sleep 0.2
    done
    log "node not idle after ${WAIT} s (state: '${st:-none}')"
    show_logs
    exit 1
}

cmd_stop() {
    if [[ $(id -u) -ne 0 ]]; then
        if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$DIR/run/slurmd.pid"; then
            log "stopping the cluster needs root"; exit 1
        fi
        return 0
    fi
    mkdir -p "$DIR"
    exec 9>>"$DIR/.lock"
    flock -w 120 9 || { log "timed out waiting for $DIR/.lock"; exit 1; }
    stop_daemons
    kill_pidfile "$DIR/munged.pid"
}

cmd_status() {
    local st rc=0
    if ! pid_alive "$DIR/run/slurmctld.pid"; then echo "slurmctld: not running"; rc=1; fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then echo "slurmd: not running"; rc=1; fi
    [[ -f $SCRATCH_CONF ]] || { echo "no $SCRATCH_CONF"; return 1; }
    ((rc == 0)) || return $rc # sinfo would retry a dead controller for ~30 s
    sl timeout 10 sinfo 2>&1 || rc=1
    sl timeout 10 squeue 2>&1 || rc=1
    st=$(node_state)
    state_good "$st" || rc=1
    return $rc
}

cmd_env() {
    if [[ $(client_conf) != "$ETC_CONF" ]]; then
        printf 'export SLURM_CONF=%q\n' "$SCRATCH_CONF"
    fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
