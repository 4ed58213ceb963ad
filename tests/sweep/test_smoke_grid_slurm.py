"""The 216-run grid, each run shrunk by --smoke, through the real local SLURM cluster.

Every (variant, lr, wd) cell trains to the end under seed 0 (36 runs: the seeds only change a
number, and 216 process starts would cost this 2-core machine a quarter of an hour); the other 180
are then submitted by a relaunch, in one sbatch call, and cancelled, which leaves each of the 216
runs in a final state that the next relaunch would act on.
"""

from __future__ import annotations

import itertools

import pytest

from deconcnn.cli import run as sweep_cli
from deconcnn.runconfig import CONF_DIR
from sweeps import LOCAL_SLURM, launch_json, settle

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")


def test_every_cell_of_the_216_run_grid_trains_through_slurm_and_the_rest_is_submitted_in_one_call(tmp_path, capsys):
    sweep_file = CONF_DIR.parent / "sweeps" / "loss_lin_slope.yaml"
    common = ("--executor", "slurm", "--smoke", "--skip-check", "--out", tmp_path, *LOCAL_SLURM)
    assert launch_json(sweep_file, "--only", "*_s0", *common) == 0
    out = capsys.readouterr().out
    assert "36 runs submitted" in out and "1 sbatch call(s)" in out
    sweep_dir = tmp_path / "loss_lin_slope-smoke"

    status = settle(sweep_dir, capsys, timeout=20 * 60)
    seed0 = {r["run_id"]: r for r in status["runs"] if r["run_id"].endswith("_s0")}
    cells = {f"{v}_lr{lr}_wd{wd}_s0" for v, lr, wd in itertools.product(VARIANTS, (0.05, 0.1, 0.2), (1e-4, 1e-3, 1e-2))}
    assert set(seed0) == cells
    assert all(r["state"] in ("completed", "diverged") for r in seed0.values()), [
        (r["run_id"], r["state"], r["reason"]) for r in seed0.values() if r["state"] not in ("completed", "diverged")
    ]
    for run in seed0.values():
        if run["state"] == "diverged":
            assert run["reason"].startswith("diverged at step")
    assert status["counts"]["all"]["missing"] == 180

    # The relaunch keeps the 36 finished runs and sends the other 180 as one array.
    assert launch_json(sweep_file, *common) == 0
    out = capsys.readouterr().out
    assert "180 runs submitted" in out and "1 sbatch call(s)" in out
    assert sweep_cli(["cancel", str(sweep_dir)]) == 0
    status = settle(sweep_dir, capsys, timeout=5 * 60)
    counts = status["counts"]
    assert counts["all"]["total"] == 216
    for variant in VARIANTS:
        assert counts[variant]["total"] == 54
    finished = {r["run_id"] for r in status["runs"] if r["state"] in ("completed", "diverged")}
    assert set(seed0) <= finished  # a cancel never touches a finished run
    # Runs that started before the cancel may have finished; every other one is cancelled.
    assert {r["state"] for r in status["runs"] if r["run_id"] not in finished} == {"cancelled"}
