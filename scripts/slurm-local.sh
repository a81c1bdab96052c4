#!/usr/bin/env bash
# scripts/slurm-local.sh — a real one-node Slurm cluster on this machine, to run cluster/*.sbatch unchanged.
#
#   scripts/slurm-local.sh up       install what is missing, write the config, start munged + slurmctld + slurmd,
#                                   wait until the node is idle (idempotent: a running cluster is left as it is)
#   scripts/slurm-local.sh down     cancel every job, stop the three daemons (idempotent)
#   scripts/slurm-local.sh status   daemons, node and queue
#   Then: export SLURM_CONF=/var/tmp/deltatune-slurm/slurm.conf (printed by `up`) and sbatch/srun/squeue as usual.
#
# What it is: Debian's Slurm (slurm-wlm 22.05) with one node, this machine's hostname on 127.0.0.1, and one
# partition `local` with this machine's cores (what `slurmd -C` reports). Nothing needs another machine, systemd,
# cgroups or a database:
#   - every file lives under the state dir ($DELTATUNE_SLURM_DIR, default /var/tmp/deltatune-slurm): the config,
#     munge's key and socket, slurmctld's state, slurmd's spool, pid files and logs. /etc is not touched, so a
#     system Slurm, if any, is not disturbed (clients find this one through SLURM_CONF);
#   - munged runs on its own socket and key (AuthInfo=socket=...), so it can't clash with a system munged;
#   - the daemons run as root (SlurmUser=root): a throw-away test cluster, and no slurm user's permissions to set up;
#   - proctrack/linuxproc + task/none: process tracking through /proc, no cgroup hierarchy required (containers
#     rarely give one); select/cons_tres with CR_Core hands out cores, so 2 tasks x 1 cpu fit a 2-core machine;
#   - JobRequeue=1 (batch jobs may be requeued, as the sbatch scripts do after a preemption checkpoint),
#     ReturnToService=2 (a node that went down, e.g. after a restart of slurmd, comes back by itself);
#   - MpiDefault=none, as on most sites: the scripts ask for `srun --mpi=pmix` explicitly. The pmix plugin
#     (mpi_pmix_v4.so, package slurm-wlm-basic-plugins) dlopens /usr/lib/<arch>/pmix2/lib/libpmix.so, which only
#     libpmix-dev ships (libpmix2 has libpmix.so.2): without libpmix-dev, `srun --mpi=pmix` fails to load it.
# Ports: slurmctld 6817, slurmd 6818 (Slurm's defaults; SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_D_PORT override).
set -euo pipefail

STATE=${DELTATUNE_SLURM_DIR:-/var/tmp/deltatune-slurm}
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
D_PORT=${SLURM_LOCAL_D_PORT:-6818}
NODE=$(hostname -s)
PARTITION=local
ARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
PMIX_PLUGIN=/usr/lib/$ARCH/slurm-wlm/mpi_pmix.so
PMIX_LIB=/usr/lib/$ARCH/pmix2/lib/libpmix.so  # what mpi_pmix_v4.so dlopens
export SLURM_CONF=$CONF

die() { echo "slurm-local: $*" >&2; exit 2; }
say() { echo "slurm-local: $*"; }
need_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (it installs packages, and slurmd must be root to start jobs as their \
user); run it as root, e.g. sudo $0 $*"
}

# The pid in FILE, if that process is alive.
alive_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# ---- install --------------------------------------------------------------------------------------------------
install_missing() {
  local pkgs=()
  command -v munged >/dev/null || pkgs+=(munge)
  command -v slurmctld >/dev/null || pkgs+=(slurmctld)
  command -v slurmd >/dev/null || pkgs+=(slurmd)
  command -v sbatch >/dev/null || pkgs+=(slurm-client)
  [ -e "$PMIX_PLUGIN" ] || pkgs+=(slurm-wlm-basic-plugins)
  [ -e "$PMIX_LIB" ] || pkgs+=(libpmix-dev)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them (Debian/Ubuntu only)"
  say "installing ${pkgs[*]}"
  # The packages' postinst scripts try to start services; policy-rc.d or the lack of systemd stops that, which
  # is what we want: this script starts the daemons itself, with its own config.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >"$STATE/apt.log" 2>&1 || {
    # A stale package list is the usual reason; one update, then try again.
    apt-get update >>"$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$STATE/apt.log" 2>&1 ||
      die "apt-get install ${pkgs[*]} failed; see $STATE/apt.log"
  }
}

# ---- config ---------------------------------------------------------------------------------------------------
write_conf() {
  # The node line as slurmd sees this machine (CPUs, sockets, cores, threads, memory): a node whose config
  # claims more than it has is drained by slurmctld.
  local hw
  hw=$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]*//")
  cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh up; rewritten at every start. One node, this machine, on loopback.
ClusterName=deltatune-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again only after its old credentials expired (default 120 s, plus the
# next scheduling pass): 10 s lets a preempted-and-requeued test job come back within seconds.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 s / 30 s): a job that became eligible (a requeued one) starts at once.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
JobRequeue=1
ReturnToService=2
# GPUs are a known resource type (none on this node), so scripts that ask for --gpus-per-node=0 are accepted.
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# No mail on this machine (slurmctld logs an error at start when the default /usr/bin/mail is absent).
MailProg=/bin/true
# Finished jobs stay visible to scontrol for 10 minutes (no accounting database: sacct has nothing).
MinJobAge=600
# A job's processes get 10 s between SIGTERM and SIGKILL; a checkpoint of a small run takes well under that.
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# ---- daemons --------------------------------------------------------------------------------------------------
start_munge() {
  if alive_pid "$MUNGE_DIR/munged.pid" >/dev/null; then return 0; fi
  # munged checks that its key and directories belong to the user it runs as and are not writable by others.
  install -d -m 0700 "$MUNGE_DIR"
  if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    else
      dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
    fi
    chmod 0600 "$MUNGE_DIR/munge.key"
  fi
  # --force: munged as root (the key is root's here) and past a stale socket left by a killed munged.
  munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
  munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null ||
    die "munged started but a credential does not round-trip; see $STATE/log/munged.log"
}

start_slurm() {
  if ! alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
    # -c: a cold start (no jobs recovered from an earlier cluster); -i: ignore state that does not match the config.
    slurmctld -c -i -f "$CONF" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
  fi
  if ! alive_pid "$STATE/run/slurmd.pid" >/dev/null; then
    slurmd -f "$CONF" || die "slurmd did not start; see $STATE/log/slurmd.log"
  fi
}

wait_idle() {
  local state="" d
  for _ in $(seq 1 60); do
    # A daemon that died at start (a port in use, a bad config line) won't come back: say so now, with its log.
    for d in slurmctld slurmd; do
      alive_pid "$STATE/run/$d.pid" >/dev/null && continue
      sleep 1  # its pid file may not be written yet
      alive_pid "$STATE/run/$d.pid" >/dev/null && continue
      echo "slurm-local: $d exited at start; last lines of $STATE/log/$d.log:" >&2
      tail -n 15 "$STATE/log/$d.log" >&2 || true
      exit 1
    done
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mixed|allocated) return 0 ;;
    esac
    sleep 1
  done
  echo "slurm-local: node $NODE is '${state:-unknown}' after 60 s, not idle; last lines of the logs:" >&2
  tail -n 15 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  exit 1
}

# ---- commands -------------------------------------------------------------------------------------------------
up() {
  need_root up
  install -d -m 0755 "$STATE" "$STATE/ctld" "$STATE/d" "$STATE/run" "$STATE/log"
  install_missing
  local running=1
  alive_pid "$STATE/run/slurmctld.pid" >/dev/null && alive_pid "$STATE/run/slurmd.pid" >/dev/null || running=0
  # A running cluster keeps its config (and jobs); a new one gets a config written from this machine.
  [ "$running" -eq 1 ] || write_conf
  start_munge
  start_slurm
  wait_idle
  say "up: node $NODE, partition $PARTITION ($(sinfo -h -p "$PARTITION" -o %C | awk -F/ '{print $4}') cpus)"
  say "export SLURM_CONF=$CONF"
}

# stop_pid FILE NAME: SIGTERM to the process in FILE, SIGKILL if it is still there 15 s later.
stop_pid() {
  local file=$1 name=$2 pid
  pid=$(alive_pid "$file") || { rm -f "$file"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; say "stopped $name ($pid)"; return 0; }
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
  say "killed $name ($pid): it ignored SIGTERM for 15 s"
}

down() {
  need_root down
  [ -d "$STATE" ] || { say "down: nothing to stop ($STATE does not exist)"; return 0; }
  if alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
    # Jobs first, while slurmctld and slurmd can still end their steps (slurmstepd outlives slurmd otherwise).
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 30); do
        [ -z "$(squeue -h -o %i 2>/dev/null || true)" ] && break
        sleep 1
      done
    fi
  fi
  stop_pid "$STATE/run/slurmd.pid" slurmd
  stop_pid "$STATE/run/slurmctld.pid" slurmctld
  stop_pid "$MUNGE_DIR/munged.pid" munged
  say "down"
}

status() {
  local name file pid rc=0
  for name in munged slurmctld slurmd; do
    file=$STATE/run/$name.pid
    [ "$name" = munged ] && file=$MUNGE_DIR/munged.pid
    if pid=$(alive_pid "$file"); then echo "$name: running ($pid)"; else echo "$name: stopped"; rc=3; fi
  done
  if [ "$rc" -eq 0 ]; then
    sinfo -N -o "%N %P %T %C" || rc=3
    squeue || rc=3
    echo "export SLURM_CONF=$CONF"
  fi
  return "$rc"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
