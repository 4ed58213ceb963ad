"""`make demo`'s sweep, as the Makefile runs it but with lighter schedules: it completes on this
machine and ends with the analysis in the report, a fits row for every run."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from deconcnn.analysis.analysis_plots import ANALYSIS_PLOTS
from deconcnn.analysis.fits import MODELS
from deconcnn.cli import run as sweep_cli
from deconcnn.runconfig import CONF_DIR

pytestmark = pytest.mark.slow


# Curvature records cost most of a demo run's CPU: every 4 epochs instead of 2 on 16 samples instead
# of 32 still gives each run four (steps 0-96), and validation once an epoch still ends every epoch
# with one. Every run at S-narrow's width (0.125, as conf/debug/demo.yaml's 0.25 halved): a third of
# the CPU (21 CPU-s a run instead of 51), the same 16 epochs of 8 steps for the analysis to fit.
LIGHTER = [
    "callbacks.curvature_monitor.compute_every_n_steps=32",
    "callbacks.curvature_monitor.batch_size=16",
    "trainer.val_check_interval=1.0",
    "model.width=0.125",
]


def test_the_demo_sweep_ends_with_every_run_fitted_and_the_analysis_in_the_report(tmp_path, capsys):
    demo = CONF_DIR.parent / "sweeps" / "demo.yaml"
    launch = ["launch", str(demo), "--executor", "local", "--parallel", "2", "--out", str(tmp_path)]
    assert sweep_cli([*launch, *LIGHTER]) == 0
    assert "8 runs submitted" in capsys.readouterr().out
    sweep_dir = tmp_path / "demo"
    assert sweep_cli(["analyze", str(sweep_dir)]) == 0

    runs = pq.read_table(sweep_dir / "analysis" / "runs.parquet").to_pylist()
    assert len(runs) == 8 and {r["status"] for r in runs} == {"completed"}
    fits = pq.read_table(sweep_dir / "analysis" / "fits.parquet").to_pylist()
    assert sorted((f["run_id"], f["model"]) for f in fits) == sorted((r["run_id"], m) for r in runs for m in MODELS)
    # 16 epochs cover the early window: every run has an alpha_early or a reason
    assert all(r["alpha_early"] == r["alpha_early"] or r["alpha_early_reason"] for r in runs)
    assert sum(r["alpha_early"] == r["alpha_early"] for r in runs) >= 4

    page = (sweep_dir / "report" / "index.html").read_text()
    assert "Loss-curve analysis" in page
    for plot in ANALYSIS_PLOTS:
        assert f"../analysis/{plot}" in page and (sweep_dir / "analysis" / plot).stat().st_size > 0
