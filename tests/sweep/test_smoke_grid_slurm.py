"""The whole 216-run grid, each run shrunk by --smoke, through the real local SLURM cluster."""

from __future__ import annotations

import time

import pytest

from deconcnn.runconfig import CONF_DIR
from sweeps import LOCAL_SLURM, launch_json, status_of

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_smoke_of_the_216_run_grid_completes_through_slurm(tmp_path, capsys):
    sweep_file = CONF_DIR.parent / "sweeps" / "loss_lin_slope.yaml"
    assert (
        launch_json(sweep_file, "--executor", "slurm", "--smoke", "--skip-check", "--out", tmp_path, *LOCAL_SLURM) == 0
    )
    out = capsys.readouterr().out
    assert "216 runs submitted" in out and "1 sbatch call(s)" in out
    sweep_dir = tmp_path / "loss_lin_slope-smoke"
    deadline = time.monotonic() + 50 * 60
    while True:
        status = status_of(sweep_dir, capsys)
        counts = status["counts"]["all"]
        if counts["pending"] == 0 and counts["running"] == 0:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(10)
    assert counts["total"] == 216 and counts["completed"] + counts["diverged"] == 216, [
        (r["run_id"], r["state"], r["reason"]) for r in status["runs"] if r["state"] not in ("completed", "diverged")
    ]
    for run in status["runs"]:
        if run["state"] == "diverged":
            assert run["reason"].startswith("diverged at step")
    for variant in ("S-core", "S-adamw", "S-bn-off", "S-narrow"):
        assert status["counts"][variant]["total"] == 54
