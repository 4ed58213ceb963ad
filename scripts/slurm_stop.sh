#!/usr/bin/env bash
# Stop the localhost SLURM cluster started by scripts/slurm_start.sh, in reverse start order:
# slurmd, slurmctld, slurmdbd, mariadbd, munged. Each daemon is found by its pid file under the
# state directory (never by process name), sent SIGTERM, and SIGKILLed if still alive after a
# grace period. Idempotent: a missing pid file or a dead process is simply skipped.
#
#   scripts/slurm_stop.sh           stop the daemons, keep the state dir (jobs, accounting DB)
#   scripts/slurm_stop.sh --purge   also delete the state dir (next start is from scratch)
#
# Jobs that are still running keep their slurmstepd processes (as on any SLURM cluster, they are
# picked up again by the next slurmd); cancel them first with scancel if that matters.
set -euo pipefail

STATE="${DECONCNN_SLURM_STATE:-/tmp/deconcnn-slurm}"
GRACE="${DECONCNN_SLURM_STOP_GRACE:-15}"
purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

T0=$EPOCHREALTIME
log() { printf '[slurm_stop %6.2fs] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')" "$*"; }

if [[ "$(id -u)" != 0 ]]; then
    echo "slurm_stop: error: must run as root" >&2
    exit 1
fi

# running PID: the process exists and is not a zombie.
running() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# stop NAME PIDFILE EXPECTED_COMM: terminate the process named by PIDFILE, if it is alive and its
# command name is EXPECTED_COMM (guards against a recycled pid).
stop() {
    local name="$1" pidfile="$2" comm="$3" pid
    if [[ ! -s "$pidfile" ]]; then
        log "$name: not running (no pid file)"
        return 0
    fi
    pid=$(head -n1 "$pidfile" | tr -dc '0-9')
    if [[ -z "$pid" ]] || ! running "$pid"; then
        log "$name: not running (stale pid file)"
        rm -f "$pidfile"
        return 0
    fi
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$comm" ]]; then
        log "$name: pid $pid is $(cat "/proc/$pid/comm" 2>/dev/null || echo '?'), not $comm; leaving it alone"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( ${EPOCHREALTIME%.*} + GRACE ))
    while running "$pid"; do
        if (( ${EPOCHREALTIME%.*} >= deadline )); then
            log "$name: still alive after ${GRACE}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

stop slurmd    "$STATE/run/slurmd.pid"     slurmd
stop slurmctld "$STATE/run/slurmctld.pid"  slurmctld
stop slurmdbd  "$STATE/run/slurmdbd.pid"   slurmdbd
stop mariadbd  "$STATE/mysql/mariadbd.pid"   mariadbd
stop munged    "$STATE/munge/munged.pid"   munged

if (( purge )); then
    case "$STATE" in
        /|"") echo "slurm_stop: refusing to purge '$STATE'" >&2; exit 1 ;;
    esac
    rm -rf "$STATE"
    log "state dir $STATE removed"
fi
log "done"
