#!/usr/bin/env bash
# Stop the daemons of scripts/slurm-up.sh, by their pid files (never by name: other SLURM or
# database processes on the machine are not ours to stop). Jobs still running are cancelled
# first, so no job outlives its cluster.
set -uo pipefail
command -v scancel >/dev/null && [ -s /run/slurmctld.pid ] && scancel --user="$(id -un)" 2>/dev/null
stop() {  # stop PIDFILE: TERM the process, wait up to 10 s for it to exit
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "slurm-down: $pid ($1) still running after 10 s" >&2
}
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/slurmdbd.pid
stop /run/mysqld/mysqld.pid
stop /run/munge/munged.pid
true
