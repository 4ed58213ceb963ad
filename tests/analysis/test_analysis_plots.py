"""The analysis figures draw what the rows hold, including what does not fit the usual case."""

from __future__ import annotations

import math

from fake_sweep import make_sweep

import deconcnn.analysis.analysis_plots as AP
from deconcnn.analysis.analyze import analyze
from deconcnn.analysis.plateau import SHAPE_RISING, SHAPE_TRACKS_LR
from deconcnn.analysis.plots import Layout, Run, robust_range

PNG = b"\x89PNG\r\n\x1a\n"


def test_knee_vs_plateau_takes_intervals_that_miss_their_estimate_and_runs_without_a_plateau(tmp_path) -> None:
    rows = [
        # a bootstrap interval need not contain the point estimate
        {"knee_epoch": 2.0, "knee_epoch_lo": 2.5, "knee_epoch_hi": 3.0, "lambda_max_plateau_epoch": 4.0},
        {
            "knee_epoch": 1.0,
            "lambda_max_plateau_epoch": math.nan,
            "lambda_max_shape": SHAPE_TRACKS_LR,
        },
        {"knee_epoch": 1.5, "lambda_max_plateau_epoch": math.nan, "lambda_max_shape": SHAPE_RISING},
    ]
    runs = [Run(f"r{i}", "v", {}, "completed", {"run_id": f"r{i}", **r}) for i, r in enumerate(rows)]
    AP.knee_vs_plateau(tmp_path / "k.png", Layout.of(runs, ["v"], []))
    assert (tmp_path / "k.png").read_bytes().startswith(PNG)


def test_robust_colour_limits_ignore_one_outlier() -> None:
    lo, hi = robust_range([0.50, 0.52, 0.55, 0.53, 0.51, 0.54, 20.0])
    assert lo >= 0.5 and hi < 1.0
    assert robust_range([0.5, 0.7]) == (0.5, 0.7)


def test_a_plot_that_fails_leaves_a_figure_with_the_error_and_the_report_is_written(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(AP, "mosaic", broken)
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), epochs=4, steps_per_epoch=20)
    result = analyze(sw.path, n_boot=0, workers=1, progress=False)
    assert result.plot_errors == {"fits_mosaic.png": "RuntimeError: drawing failed"}
    assert (result.out_dir / "fits_mosaic.png").read_bytes().startswith(PNG)
    assert "`fits_mosaic.png`: RuntimeError: drawing failed" in (result.out_dir / "section.md").read_text()
    assert (sw.path / "report" / "index.html").exists()
