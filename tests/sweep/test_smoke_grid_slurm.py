"""The 216-run grid, each run shrunk by --smoke, through the real local SLURM cluster.

Each variant trains to the end in its harshest cell (the largest LR and weight decay, seed 0: the
other cells only change numbers, and every run start costs this 2-core machine ~7 CPU-s of
imports); every one of the 216 runs is composed and validated by the launch that submits it. The
other 212 are then submitted by a relaunch, in one sbatch call, and cancelled, which leaves each
of the 216 runs in a final state that the next relaunch would act on.
"""

from __future__ import annotations

import pytest

from deconcnn.cli import run as sweep_cli
from deconcnn.runconfig import CONF_DIR
from sweeps import LOCAL_SLURM, launch_json, settle

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")


def test_every_variant_of_the_216_run_grid_trains_through_slurm_and_the_rest_is_submitted_in_one_call(tmp_path, capsys):
    sweep_file = CONF_DIR.parent / "sweeps" / "loss_lin_slope.yaml"
    common = ("--executor", "slurm", "--smoke", "--skip-check", "--out", tmp_path, *LOCAL_SLURM)
    assert launch_json(sweep_file, "--only", "*_lr0.2_wd0.01_s0", *common) == 0
    out = capsys.readouterr().out
    assert "4 runs submitted" in out and "1 sbatch call(s)" in out
    sweep_dir = tmp_path / "loss_lin_slope-smoke"

    status = settle(sweep_dir, capsys, timeout=20 * 60)
    trained = {r["run_id"]: r for r in status["runs"] if r["state"] != "missing"}
    assert set(trained) == {f"{v}_lr0.2_wd0.01_s0" for v in VARIANTS}
    assert all(r["state"] in ("completed", "diverged") for r in trained.values()), [
        (r["run_id"], r["state"], r["reason"]) for r in trained.values() if r["state"] not in ("completed", "diverged")
    ]
    for run in trained.values():
        if run["state"] == "diverged":
            assert run["reason"].startswith("diverged at step")
    assert status["counts"]["all"]["missing"] == 212

    # The relaunch keeps the 4 finished runs and sends the other 212 as one array.
    assert launch_json(sweep_file, *common) == 0
    out = capsys.readouterr().out
    assert "212 runs submitted" in out and "1 sbatch call(s)" in out
    assert sweep_cli(["cancel", str(sweep_dir)]) == 0
    status = settle(sweep_dir, capsys, timeout=5 * 60)
    counts = status["counts"]
    assert counts["all"]["total"] == 216
    for variant in VARIANTS:
        assert counts[variant]["total"] == 54
    finished = {r["run_id"] for r in status["runs"] if r["state"] in ("completed", "diverged")}
    assert set(trained) <= finished  # a cancel never touches a finished run
    # Runs that started before the cancel may have finished; every other one is cancelled.
    assert {r["state"] for r in status["runs"] if r["run_id"] not in finished} == {"cancelled"}
