"""launch/status against the real local SLURM cluster (scripts/slurm_start.sh), not a mock."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from deconcnn.backends.slurm import cli as slurm
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import settle, slurm_launch, train_steps, wait_for, write_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_array_submission_runs_to_completion_and_relaunch_submits_nothing(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    assert slurm_launch(sweep_file, tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 runs submitted" in out and "1 sbatch call(s)" in out
    sweep_dir = tmp_path / "tiny"
    manifest = SweepDir(sweep_dir).read_manifest()
    jobs = [entry.submissions[-1].job_id for entry in manifest.runs.values()]
    assert len({j.split("_")[0] for j in jobs}) == 1 and len(set(jobs)) == 3  # one array, 3 tasks
    # the launch says so: the array's job id, its tasks and runs, and the command to follow it
    array = jobs[0].split("_")[0]
    assert f"1 sbatch call(s), 1 job array(s), 3 tasks:\n  job {array}: array tasks 0-2, 3 runs (1 per task), " in out
    assert f"follow it: deconcnn-sweep status {sweep_dir} --watch" in out
    assert manifest.submissions[-1].skip_check is True

    status = settle(sweep_dir, capsys)
    assert status["counts"]["all"]["completed"] == 3, status
    for run in status["runs"]:
        assert (Path(run["run_dir"]) / "metrics.jsonl").stat().st_size > 0
        assert json.loads((Path(run["run_dir"]) / "run.json").read_text())["slurm_job_id"] == run["job_id"]
    # SLURM wrote each task's log into its array's own folder under slurm/, where the manifest says.
    task_logs = {Path(entry.submissions[-1].log) for entry in manifest.runs.values()}
    assert all(log.is_file() for log in task_logs), task_logs
    assert {log.parent for log in task_logs} == {sweep_dir / "slurm" / f"{manifest.submissions[-1].id}-0"}
    assert slurm_launch(sweep_file, tmp_path) == 0
    assert "0 runs submitted, skipped: 3 completed" in capsys.readouterr().out


def test_requeued_run_resumes_from_its_checkpoint_logging_every_step_once(tmp_path, capsys):
    # 6 epochs x 5 steps, flushing every 2 steps: long enough to be requeued mid-training.
    sweep_file = write_sweep(
        tmp_path / "long.yaml",
        seeds="0",
        name="long",
        extra=[
            "trainer.max_epochs=6",
            "data.source.num_samples=112",
            "callbacks.loss_slope_logger.flush_every_n_steps=2",
        ],
    )
    assert slurm_launch(sweep_file, tmp_path) == 0
    sweep_dir = tmp_path / "long"
    run_dir = SweepDir(sweep_dir).run_dir("S-core_s0")
    job_id = SweepDir(sweep_dir).read_manifest().runs["S-core_s0"].submissions[-1].job_id
    wait_for(
        "the run to get going",
        lambda: (run_dir / "checkpoints" / "last.ckpt").exists() and len(train_steps(run_dir)) >= 12,
        timeout=120,
    )
    slurm.requeue(job_id)  # what preemption with requeue does: kill now, run again later
    status = settle(sweep_dir, capsys)
    assert status["counts"]["all"]["completed"] == 1, status
    run = json.loads((run_dir / "run.json").read_text())
    assert run["attempt"] == 2 and run["resumed_from_step"] is not None and run["resumed_from_step"] > 0
    steps = Counter(train_steps(run_dir))
    assert sorted(steps) == list(range(30)) and set(steps.values()) == {1}
