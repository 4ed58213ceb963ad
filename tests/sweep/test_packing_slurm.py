"""Packed runs through the real local SLURM cluster (scripts/slurm_start.sh): k runs per array task
on one (fake) GPU, each its own process; killing one leaves its sibling running, status says so per
run, and a relaunch resubmits only the killed run."""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from deconcnn.sweep.sweepdir import SweepDir
from sweeps import PACKED, settle, slurm_launch, status_of, wait_for, write_sweep

# Long enough (128 steps) that a run is still training when its sibling is killed.
LONGER = ["data.source.num_samples=1056", "data.val_size=32", "trainer.max_epochs=2"]
STEPS = 128


def running_pid(run_dir: Path) -> int | None:
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return run["pid"] if run["status"] == "running" and Path(f"/proc/{run['pid']}").exists() else None


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# ---------------------------------------------------------------- the real cluster


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_packed_tasks_kill_one_run_sibling_completes_relaunch_resubmits_only_it(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "packed.yaml", name="packed", seeds="0,1,2,3", extra=LONGER)
    assert slurm_launch(sweep_file, tmp_path, *PACKED) == 0
    out = capsys.readouterr().out
    assert "4 runs submitted" in out and "1 sbatch call(s)" in out
    sweep_dir = tmp_path / "packed"
    manifest = SweepDir(sweep_dir).read_manifest()
    by_task: dict[str, list[str]] = defaultdict(list)
    for run_id, entry in manifest.runs.items():
        submission = entry.submissions[-1]
        assert len(submission.pack) == 2 and run_id in submission.pack
        by_task[submission.job_id].append(run_id)
    assert len(by_task) == 2 and all(len(runs) == 2 for runs in by_task.values())  # 2 tasks x 2 runs
    assert len({job.split("_")[0] for job in by_task}) == 1  # one array

    task, (victim, sibling) = sorted(by_task.items())[0]
    victim_dir, sibling_dir = (SweepDir(sweep_dir).run_dir(r) for r in (victim, sibling))
    pids = wait_for(
        "both runs of the pack training",
        lambda: (
            (running_pid(victim_dir), running_pid(sibling_dir))
            if running_pid(victim_dir) and running_pid(sibling_dir)
            else None
        ),
    )
    # Two processes, one GPU: both got the task's CUDA_VISIBLE_DEVICES from SLURM.
    gpus = {environ(pid).get("CUDA_VISIBLE_DEVICES") for pid in pids}
    assert len(gpus) == 1 and gpus.pop() in ("0", "1")
    os.kill(pids[0], signal.SIGKILL)

    # The task is still RUNNING for the sibling, yet the killed run is seen failed at once.
    def after_kill() -> dict | None:
        runs = {r["run_id"]: r for r in status_of(sweep_dir, capsys)["runs"]}
        return runs if runs[victim]["state"] == "failed" else None

    runs = wait_for("status to see the kill", after_kill, timeout=30)
    assert f"pid {pids[0]}" in runs[victim]["reason"] and "gone" in runs[victim]["reason"]
    assert runs[sibling]["state"] == "running" and running_pid(sibling_dir) == pids[1]
    assert runs[victim]["job_id"] == runs[sibling]["job_id"] == task

    status = settle(sweep_dir, capsys)
    runs = {r["run_id"]: r for r in status["runs"]}
    assert status["counts"]["all"]["completed"] == 3 and status["counts"]["all"]["failed"] == 1, status
    assert runs[victim]["state"] == "failed" and runs[victim]["reason"]
    assert json.loads((victim_dir / "run.json").read_text())["status"] == "running"  # never finished

    # The pack's task ends COMPLETED (run_pack returned normally): SLURM cannot tell, run.json can.
    def task_ended() -> dict | None:
        runs = {r["run_id"]: r for r in status_of(sweep_dir, capsys)["runs"]}
        return runs if runs[victim]["scheduler_state"] == "COMPLETED" else None

    runs = wait_for("the pack's task to end", task_ended, timeout=60)
    assert runs[victim]["state"] == "failed" and f"pid {pids[0]}" in runs[victim]["reason"]
    sibling_run = json.loads((sibling_dir / "run.json").read_text())
    assert sibling_run["status"] == "completed" and sibling_run["last_step"] == STEPS
    assert sibling_run["slurm_job_id"] == task

    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path, *PACKED) == 0
    assert "1 runs submitted, skipped: 3 completed" in capsys.readouterr().out
    manifest = SweepDir(sweep_dir).read_manifest()
    assert manifest.runs[victim].attempts == 2
    assert manifest.runs[victim].submissions[-1].pack == (victim,)
    assert all(manifest.runs[r].attempts == 1 for r in manifest.runs if r != victim)

    status = settle(sweep_dir, capsys)
    assert status["counts"]["all"]["completed"] == 4, status
    assert json.loads((victim_dir / "run.json").read_text())["attempt"] == 2
