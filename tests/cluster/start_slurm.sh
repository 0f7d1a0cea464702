#!/bin/sh
# A one-node SLURM for the cluster tests (and for trying the launcher by hand):
# installs Debian's slurmctld, slurmd, slurm-client and munge when missing, writes a
# slurm.conf for this host (its short name, its CPUs, its memory), and starts munged,
# slurmctld and slurmd. Idempotent: when the node already answers, it returns at once.
#
#   sh tests/cluster/start_slurm.sh        # exit 0: `sinfo` shows an idle node
#
# Needs root (apt-get, daemons). Exit status 1 with one line on stderr when SLURM
# cannot be installed or started here.
set -eu

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm

fail() { echo "start_slurm.sh: $*" >&2; exit 1; }

node_up() {
  command -v sinfo >/dev/null 2>&1 || return 1
  state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n1)
  case "$state" in idle*|mix*|alloc*|comp*) return 0 ;; *) return 1 ;; esac
}


if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "SLURM is not installed and installing it needs root"
  command -v apt-get >/dev/null 2>&1 || fail "no apt-get: install slurmctld, slurmd, slurm-client and munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurmctld slurmd slurm-client munge >/tmp/start_slurm.apt.log 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurmctld slurmd slurm-client munge \
         >/tmp/start_slurm.apt.log 2>&1; } \
    || fail "apt-get install slurmctld slurmd slurm-client munge failed (see /tmp/start_slurm.apt.log)"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGDIR" /run/munge /var/log/munge /var/lib/munge /etc/munge

# The configuration this script owns (rewritten when the host or its CPUs changed).
TMP=$(mktemp)
cat >"$TMP" <<CONF
# Written by tests/cluster/start_slurm.sh: a one-node cluster on $HOST.
ClusterName=mambaswelu
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait out the job credential lifetime before they start again (default
# 120 s); 10 s keeps the requeue tests short.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
JobRequeue=1
KillWait=30
MinJobAge=300
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if node_up && cmp -s "$TMP" "$CONF" 2>/dev/null; then
  rm -f "$TMP"
  exit 0   # already running with this configuration
fi
[ "$(id -u)" = 0 ] || fail "needs root to install and start the SLURM daemons"
if ! cmp -s "$TMP" "$CONF" 2>/dev/null; then
  mv "$TMP" "$CONF"
  chmod 644 "$CONF"
  changed=1
else
  rm -f "$TMP"
  changed=0
fi

# munge: a key, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then mungekey --create --force >/dev/null 2>&1 || true; fi
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 700 /etc/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key 2>/dev/null || true
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force 2>/dev/null || true
  else
    munged --force 2>/dev/null || true
  fi
  i=0
  until munge -n 2>/dev/null | unmunge >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 50 ] && fail "munged did not start"
    sleep 0.1
  done
fi

# The SLURM daemons: restarted when the configuration changed.
if [ "$changed" = 1 ]; then
  pkill_pid() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; }
  pkill_pid /run/slurmd.pid
  pkill_pid /run/slurmctld.pid
  sleep 1
fi
[ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null \
  || slurmctld -i || fail "slurmctld did not start (see $LOGDIR/slurmctld.log)"
[ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null \
  || slurmd || fail "slurmd did not start (see $LOGDIR/slurmd.log)"

i=0
until node_up; do
  i=$((i + 1))
  if [ $i -eq 20 ]; then scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true; fi
  [ $i -gt 100 ] && fail "the node $HOST did not come up: $(sinfo -h -N 2>&1 | head -n1)"
  sleep 0.2
done
exit 0
