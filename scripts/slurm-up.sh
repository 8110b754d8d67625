#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `pipe run --executor slurm` and its tests:
# installs Debian's slurm-wlm and munge when missing, writes a munge key and a minimal
# /etc/slurm/slurm.conf (this host, its CPUs and memory, one default partition), starts munged
# as the munge user and slurmctld + slurmd as root, and waits until the node is idle.
# Idempotent: a second call with the cluster up returns at once.
# Exit codes: 0 up; 77 cannot be installed or started here (not root, no apt); 1 other failure.
set -euo pipefail

say() { echo "slurm-up: $*" >&2; }
unavailable() { say "UNAVAILABLE: $*"; exit 77; }

need_install=()
command -v slurmctld >/dev/null 2>&1 || need_install+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need_install+=(munge)
if [ ${#need_install[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || unavailable "${need_install[*]} missing and not root to install them"
    command -v apt-get >/dev/null 2>&1 || unavailable "${need_install[*]} missing and no apt-get"
    say "installing ${need_install[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_install[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_install[@]}" >/dev/null 2>&1; } ||
        unavailable "apt-get install ${need_install[*]} failed"
fi

host=$(hostname -s)

node_state() { sinfo -h -N -n "$host" -o %t 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }

# The node's CPUs and memory as slurmd itself measures them: a larger RealMemory would drain it.
node_line() {
    local probe cpus mem
    probe=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$probe")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")
    # One generic "gpu" backed by /dev/null: jobs that ask for a GPU (--gres=gpu:1) can be
    # scheduled on a machine without one; such a job then fails to open CUDA, which is what
    # the tests check for `gpus`.
    echo "NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN"
}

conf() {
    cat <<EOF
# Written by pipe's scripts/slurm-up.sh: a one-node test cluster.
ClusterName=pipetest
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to \`scontrol show job\` for 5 minutes (no accounting here).
MinJobAge=300
KillWait=5
InactiveLimit=0
SchedulerType=sched/builtin
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$(node_line)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

case "$(node_state)" in
idle | mix | alloc | comp)
    say "up: node $host is $(node_state)"
    exit 0
    ;;
esac

[ "$(id -u)" = 0 ] || unavailable "the cluster is down and starting it needs root"

# munge: a key readable by the munge user only, munged running as that user.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { say "munged does not answer"; exit 1; }
fi

mkdir -p /etc/slurm /run/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
new_conf=$(conf)
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >/etc/slurm/slurm.conf
    echo "NodeName=$host Name=gpu File=/dev/null" >/etc/slurm/gres.conf
    # Daemons started with another configuration must re-read it: restart them.
    for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurm/slurmctld.pid || slurmctld
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
running /run/slurm/slurmd.pid || slurmd

for _ in $(seq 150); do
    state=$(node_state)
    case "$state" in
    idle | mix | alloc)
        say "up: node $host is $state"
        exit 0
        ;;
    down | drain | drng | fail)
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        ;;
    esac
    sleep 0.2
done
say "node $host did not become idle (state: $(node_state)); see /var/log/slurm/"
sinfo -N -l >&2 || true
exit 1
