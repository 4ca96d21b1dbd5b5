#!/usr/bin/env bash
# Stop the daemons started by tests/slurm/up.sh, by PID file (never by process name).
#   tests/slurm/down.sh
BASE=${SLURM_BASE:-/tmp/elastica-slurm}
stop() { # name pidfile
  [[ -f $2 ]] || return 0
  local pid; pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}
for f in "$BASE"/run/slurmd-*.pid; do [[ -e $f ]] && stop "slurmd $(basename "$f" .pid | cut -d- -f2-)" "$f"; done
stop slurmctld "$BASE/run/slurmctld.pid"
stop slurmdbd  "$BASE/run/slurmdbd.pid"
stop mariadb   /run/mysqld/mariadbd.pid
stop munged    /run/munge/munged.pid
rm -f "$BASE/run/slurm.conf.started"
