"""Tests against the real one-node SLURM cluster started by scripts/slurm_start.sh.

They skip (with the reason shown) when no controller answers; `make test` starts the cluster first
when run as root on Debian. Each test polls with a timeout; the slurm_cluster fixture
(conftest.py) cancels what a test leaves in the queue.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster import CLUSTER, node_state

from deconcnn.backends.slurm.cli import (
    SlurmError,
    max_array_size,
    requeue,
    sacct_states,
    scancel,
    squeue_states,
)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def sbatch(*args: str) -> str:
    """Submit with sbatch --parsable; return the job id."""
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True, timeout=30).stdout
    return out.strip().split(";", 1)[0]


def wait_until(
    job_ids: list[str],
    done: Callable[[dict[str, str]], bool],
    timeout: float = 25.0,
    interval: float = 0.5,
) -> dict[str, str]:
    """Poll sacct_states(job_ids) until done(states) holds (sacct lags squeue by seconds)."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = sacct_states(job_ids)
        if done(states):
            return states
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s; last sacct states {states}")


def test_array_of_three_completes(tmp_path: Path) -> None:
    out = f"{tmp_path}/%A_%a.out"
    job = sbatch("--array=0-2", "-o", out, "--wrap", "echo task=$SLURM_ARRAY_TASK_ID")
    want = {f"{job}_{i}" for i in range(3)}
    states = wait_until([job], lambda s: want <= s.keys() and all(s[k] == "COMPLETED" for k in want))
    assert {k: states[k] for k in want} == dict.fromkeys(want, "COMPLETED")
    for i in range(3):
        assert (tmp_path / f"{job}_{i}.out").read_text().strip() == f"task={i}"
    # Asking for single tasks keeps the task ids as keys.
    tasks = [f"{job}_1", f"{job}_2"]
    assert sacct_states(tasks) == dict.fromkeys(tasks, "COMPLETED")


def test_scancel_running_and_pending_tasks() -> None:
    # %1: task 0 runs, task 1 stays pending inside the array's pending range.
    job = sbatch("--array=0-1%1", "-o", "/dev/null", "--wrap", "sleep 300")
    running, pending = f"{job}_0", f"{job}_1"
    wait_until([job], lambda s: s.get(running) == "RUNNING")
    scancel(pending)
    scancel(running)
    states = wait_until([job], lambda s: s.get(running) == "CANCELLED" and s.get(pending) == "CANCELLED")
    assert states == {running: "CANCELLED", pending: "CANCELLED"}


def test_scancel_unknown_job_raises() -> None:
    with pytest.raises(SlurmError, match="scancel"):
        scancel("999999999")


def test_max_array_size_is_configured() -> None:
    assert max_array_size() == 1001


def test_fake_gpu_sets_cuda_visible_devices(tmp_path: Path) -> None:
    out = tmp_path / "gpu.out"
    script = 'echo "CVD=${CUDA_VISIBLE_DEVICES:-unset}"'
    job = sbatch("--gpus-per-node=1", "-o", str(out), "--wrap", script)
    wait_until([job], lambda s: s.get(job) in TERMINAL)
    assert sacct_states([job]) == {job: "COMPLETED"}
    assert re.fullmatch(r"CVD=[01]", out.read_text().strip()), out.read_text()


def test_requeue_restarts_at_once(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    job = sbatch("-o", "/dev/null", "--wrap", f"echo start >> {starts}; sleep 300")
    deadline = time.monotonic() + 15
    while not (starts.exists() and starts.read_text().count("start") == 1):
        assert time.monotonic() < deadline, "job did not start"
        time.sleep(0.2)
    first_start = squeue_states([job])[job].started
    requeue(job)
    # Left alone, a requeued job waits ~120 s, and a start missed by the event-driven scheduler
    # waits for the periodic one (18-60 s here): 10 s catches both.
    deadline = time.monotonic() + 10
    while starts.read_text().count("start") < 2:
        assert time.monotonic() < deadline, "requeued job did not start again within 10 s"
        time.sleep(0.2)
    # How status tells the requeued run's previous process.json from its new one (sweep/state.py).
    again = squeue_states([job])[job]
    assert again.state == "RUNNING" and first_start is not None and again.started > first_start
    scancel(job)


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/slurm_start.sh runs as root")
def test_slurm_start_resumes_a_drained_node_and_says_why() -> None:
    subprocess.run(["scontrol", "update", "NodeName=localhost", "State=DRAIN", "Reason=deconcnn-test"], check=True)
    assert node_state() == ("drain", "deconcnn-test")
    done = subprocess.run([str(SCRIPTS / "slurm_start.sh")], capture_output=True, text=True, check=True, timeout=120)
    assert "node localhost was drain (deconcnn-test): resuming it" in done.stdout
    assert node_state()[0] == "idle"


def _add_and_report(a: int, b: int) -> tuple[int, str, str]:
    return a + b, os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_CLUSTER_NAME", "")


def test_submitit_autoexecutor_roundtrip(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    # Test modules are not importable inside the job: pickle this module's functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
        assert executor.cluster == "slurm"
        executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1, mem_gb=1)
        job = executor.submit(_add_and_report, 2, 3)
        total, job_id, cluster = job.result()  # submitit watches the state through sacct
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert total == 5
    assert job_id == job.job_id
    assert cluster == CLUSTER
    # result() reads the result file, which can exist before sacct knows the job ended: poll.
    deadline = time.monotonic() + 15
    while job.watcher.get_state(job.job_id, mode="force") != "COMPLETED":
        assert time.monotonic() < deadline, f"submitit state {job.state!r}"
        time.sleep(0.5)
    assert sacct_states([job.job_id]) == {job.job_id: "COMPLETED"}


def test_submitit_sees_cancelled_job(tmp_path: Path) -> None:
    """Without sacct a cancelled job's result() hangs forever; with it, it raises."""
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=5, slurm_partition="debug")
    job = executor.submit(time.sleep, 300)
    wait_until([job.job_id], lambda s: s.get(job.job_id) == "RUNNING")
    job.cancel()
    job._results_timeout_s = 2  # submitit otherwise waits 15 s for a result file that never comes
    start = time.monotonic()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    assert time.monotonic() - start < 25
    assert job.state.startswith("CANCELLED")
