#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start-cluster.sh.
#
#   sudo scripts/slurm/stop-cluster.sh
#
# Cancels the jobs still queued or running on it, then stops slurmd and
# slurmctld (SIGTERM, SIGKILL after a grace period) through their pid files,
# and munged if start-cluster.sh started it. Removes the /etc/slurm/slurm.conf
# symlink it created. The state directory (config, logs) is kept for
# inspection. Idempotent: stopping a stopped cluster succeeds.
#
# Environment: BORNFIELD_SLURM_DIR (state directory) [/var/lib/bornfield-slurm]
set -euo pipefail

STATE_DIR=${BORNFIELD_SLURM_DIR:-/var/lib/bornfield-slurm}
CONF="$STATE_DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
GRACE=15 # seconds between SIGTERM and SIGKILL

log() { echo "stop-cluster: $*"; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2 pid deadline
  if ! pid_alive "$pidfile"; then
    log "$name is not running"
    return 0
  fi
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid"
  deadline=$((SECONDS + GRACE))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not exit within ${GRACE} s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

if [ "$(id -u)" -ne 0 ]; then
  echo "stop-cluster: error: must run as root (the daemons run as root and slurm); try: sudo $0" >&2
  exit 1
fi

if [ -r "$CONF" ] && pid_alive "$STATE_DIR/slurmctld.pid"; then
  export SLURM_CONF="$CONF"
  mapfile -t jobs < <(squeue -h -t PENDING,RUNNING,CONFIGURING,SUSPENDED -o %i 2>/dev/null)
  if [ ${#jobs[@]} -gt 0 ]; then
    log "cancelling ${#jobs[@]} job(s) still on the cluster: ${jobs[*]}"
    scancel "${jobs[@]}" 2>/dev/null || true
    deadline=$((SECONDS + GRACE))
    while [ -n "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do
      sleep 0.5
    done
  fi
fi

stop_pidfile slurmd "$STATE_DIR/slurmd.pid"
stop_pidfile slurmctld "$STATE_DIR/slurmctld.pid"

if [ -e "$STATE_DIR/munged-started-by-bornfield" ]; then
  stop_pidfile munged /run/munge/munged.pid
  rm -f "$STATE_DIR/munged-started-by-bornfield"
elif pid_alive /run/munge/munged.pid; then
  log "munged was not started by start-cluster.sh: left running"
fi

if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
  rm -f "$ETC_CONF"
fi
log "stopped (logs kept in $STATE_DIR/log)"
