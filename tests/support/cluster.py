"""The local SLURM test cluster's node and queue, as the tests see and repair them.

A node is drained by SLURM itself after a controller crash ("Duplicate jobid": the restarted
slurmctld relaunches a job slurmd still runs), which test_faults.py provokes on purpose; on a real
cluster the admin resumes it, here `resume_node` does.
"""

from __future__ import annotations

import subprocess
import time

NODE = "localhost"
CLUSTER = "deconcnn"  # ClusterName in scripts/slurm_start.sh
USABLE = {"idle", "mix", "alloc", "comp"}
SETTLE_S = 60


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.strip()


def node_state() -> tuple[str, str]:
    """(sinfo's short state, the reason SLURM gives) of the one node."""
    state, _, reason = _out("sinfo", "-h", "-N", "-n", NODE, "-o", "%t|%E").partition("|")
    return state.rstrip("*~#!%$@^-"), reason


def cluster_name() -> str:
    for line in _out("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip()
    return "?"


def cluster_report() -> str:
    """What a failed SLURM test needs to be understood: the node and the queue."""
    return f"sinfo: {'|'.join(node_state())}\nsqueue:\n{_out('squeue', '-o', '%i %T %r') or '(empty)'}"


def clear_queue() -> None:
    """Cancel every job (tests run one at a time) and wait until slurmctld has let them go."""
    subprocess.run(["scancel", "--user", _out("id", "-un")], check=False, capture_output=True)
    deadline = time.monotonic() + SETTLE_S
    while _out("squeue", "-h", "-o", "%i") and time.monotonic() < deadline:
        time.sleep(0.5)


def resume_node() -> None:
    """Resume a drained or down node (SLURM keeps the reason; it is printed, not hidden)."""
    state, reason = node_state()
    if state in USABLE:
        return
    print(f"conftest: node {NODE} was {state!r} ({reason}); resuming it")
    subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], check=False, capture_output=True)
    deadline = time.monotonic() + SETTLE_S
    while node_state()[0] not in USABLE:
        assert time.monotonic() < deadline, f"node {NODE} did not come back\n{cluster_report()}"
        time.sleep(0.5)
