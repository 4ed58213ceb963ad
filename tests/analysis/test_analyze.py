"""deconcnn-sweep analyze on fabricated sweeps with planted power laws: every run gets its rows
(failed, diverged and missing ones too, with the reason), the per-cell medians recover the planted
exponents, and the report gains the analysis section."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
from fake_sweep import LR, VARIANTS, WD, make_sweep, run_id

from deconcnn.analysis.analysis_plots import ANALYSIS_PLOTS
from deconcnn.analysis.analyze import analyze
from deconcnn.cli import run as sweep_cli

PNG = b"\x89PNG\r\n\x1a\n"
DIVERGED = run_id("S-adamw", 0.2, 1e-3, 0)
FAILED = run_id("S-core", 0.1, 1e-3, 1)
MISSING = run_id("S-core", 0.2, 1e-3, 0)


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_analyze_writes_every_table_plot_and_the_report_section(tmp_path, capsys):
    sw = make_sweep(
        tmp_path / "sweep",
        epochs=30,
        steps_per_epoch=40,
        curv_every=200,
        diverged={DIVERGED: 300},
        failed=[FAILED],
        missing=[MISSING],
    )
    capsys.readouterr()
    assert sweep_cli(["analyze", str(sw.path), "--boot", "0", "--workers", "1"]) == 0
    assert "analysed 7 runs" in capsys.readouterr().out
    out = sw.path / "analysis"
    runs = {r["run_id"]: r for r in rows(out / "runs.parquet")}
    assert set(runs) == set(sw.runs)  # every run, whatever happened to it
    assert (runs[MISSING]["status"], runs[MISSING]["reason"]) == ("missing", "no training records")
    assert runs[DIVERGED]["status"] == "diverged" and runs[FAILED]["status"] == "failed"
    fits = rows(out / "fits.parquet")
    assert {(r["run_id"], r["model"]) for r in fits} == {
        (rid, m) for rid in sw.counts for m in ("power_law", "exponential", "broken_power_law")
    }
    assert [r[LR] for r in fits][:1] and all(r["variant"] for r in fits)  # identity columns on every row
    summary = rows(out / "summary.parquet")
    cell = next(r for r in summary if (r["variant"], r[LR], r[WD]) == ("S-core", 0.1, 1e-3))
    assert (cell["n_runs"], cell["n_completed"], cell["n_failed"], cell["alpha_full_n"]) == (2, 1, 1, 1)
    for name in ("comparisons", "knees"):
        assert (out / f"{name}.parquet").exists(), name
    # never pooled over cells: the window scan per cell, correlations within cells or partial on them
    scan = rows(out / "window_scan.parquet")
    assert {(r["variant"], r[LR], r[WD]) for r in scan} == {
        (ident["variant"], ident["params"][LR], ident["params"][WD])
        for rid, ident in sw.runs.items()
        if ident["status"] == "completed"
    }
    assert all(1 <= r["n"] <= r["n_runs"] for r in scan)
    scopes = {r["scope"] for r in rows(out / "correlations.parquet")}
    assert scopes == {"within cell (across seeds)", "partial on the cells (seeds' deviations from their cell's mean)"}
    for name in ANALYSIS_PLOTS:
        assert (out / name).read_bytes().startswith(PNG), name
    index = (sw.path / "report" / "index.html").read_text()
    assert "Loss-curve analysis" in index and "../analysis/fits_mosaic.png" in index
    # Units invariance holds on real rows: bits give the nats alpha.
    assert all(r["units_agree"] for r in runs.values() if r["status"] == "completed")


def test_a_too_short_curve_gets_a_row_with_the_reason(tmp_path):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), epochs=1, steps_per_epoch=4)
    result = analyze(sw.path, n_boot=0, workers=1, progress=False, write_report=False)
    (run,) = rows(result.files["runs"])
    assert run["status"] == "completed" and math.isnan(run["alpha_full"])
    assert run["reason"] == run["alpha_full_reason"] == run["alpha_early_reason"] == "short run: 1.00 < 3 epochs"
    assert run["curve_flag"] == "short run: 1.00 epochs"
    assert all(not r["ok"] and r["reason"] for r in rows(result.files["fits"]))


@pytest.mark.slow
def test_the_summary_recovers_the_planted_alphas_of_a_216_run_sweep(tmp_path):
    alphas = {"S-core": 0.35, "S-adamw": 0.45, "S-bn-off": 0.55, "S-narrow": 0.65}
    sw = make_sweep(
        tmp_path / "sweep",
        variants=VARIANTS,
        lrs=(0.05, 0.1, 0.2),
        wds=(1e-4, 1e-3, 1e-2),
        seeds=range(6),
        epochs=50,
        steps_per_epoch=40,
        curv_every=500,
        noise_every=2,
        alphas=alphas,
        noise=0.08,
    )
    assert len(sw.runs) == 216
    result = analyze(sw.path, n_boot=0, workers=2, progress=False, write_report=False)
    summary = rows(result.files["summary"])
    assert len(summary) == 36
    for cell in summary:
        assert cell["n_completed"] == 6 and cell["alpha_full_n"] == 6
        assert cell["alpha_full_median"] == pytest.approx(alphas[cell["variant"]], abs=0.03), cell
        # medians of 6 seeds over half a decade of 40-step epochs: sd 0.019 across cells, mean
        # -0.006 (measured); 0.06 is 3 sd, so 36 cells pass unless alpha_early is biased
        assert cell["alpha_early_median"] == pytest.approx(alphas[cell["variant"]], abs=0.06), cell


def test_a_fifth_variant_and_a_width_axis_are_columns_and_plot_dimensions(tmp_path):
    sw = make_sweep(
        tmp_path / "sweep",
        variants=("S-core", "S-wide"),
        lrs=(0.1,),
        wds=(1e-3,),
        seeds=(0, 1),
        extra_axes={"model.width": (0.5, 1.0)},
        epochs=20,
        steps_per_epoch=20,
        curv_every=100,
    )
    result = analyze(sw.path, n_boot=0, workers=1, progress=False)
    summary = rows(result.files["summary"])
    assert sorted((r["variant"], r["model.width"]) for r in summary) == [
        ("S-core", 0.5),
        ("S-core", 1.0),
        ("S-wide", 0.5),
        ("S-wide", 1.0),
    ]
    assert all(r["n_runs"] == 2 for r in summary)
    comparisons = rows(result.files["comparisons"])
    assert {(r["variant"], r["baseline"], r["model.width"]) for r in comparisons} == {
        ("S-wide", "S-core", 0.5),
        ("S-wide", "S-core", 1.0),
    }
    # lr and wd take one value here, so width is the plots' colour axis
    assert "colour = model.width" in (sw.path / "report" / "index.md").read_text()


ZERO, NEG = run_id("S-core", 0.1, 1e-3, 0), run_id("S-core", 0.1, 1e-3, 1)
NAN, INF = run_id("S-core", 0.2, 1e-3, 0), run_id("S-core", 0.2, 1e-3, 1)
SHORT, WRONG_BITS = run_id("S-adamw", 0.1, 1e-3, 0), run_id("S-adamw", 0.2, 1e-3, 1)


def test_bad_curves_get_reasons_and_flags_never_a_failed_command_and_the_report_is_written(
    tmp_path, capsys, monkeypatch
):
    """Zero, negative, NaN and inf losses in completed runs, a 3-epoch run among 20-epoch ones and a
    wrong bits column, through the real command: exit 0, every plot and the report, each bad run
    with its reason or flag, and no flagged value in a median. One collect: the report reuses it."""
    import deconcnn.analysis.analyze as analyze_module
    import deconcnn.analysis.report as report_module

    calls = []
    real_collect = analyze_module.collect

    def counting(*args, **kwargs):
        calls.append(args)
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(analyze_module, "collect", counting)
    monkeypatch.setattr(report_module, "collect", counting)
    sw = make_sweep(
        tmp_path / "sweep",
        epochs=20,
        steps_per_epoch=20,
        curv_every=50,
        bad_losses={ZERO: {50: 0.0}, NEG: {60: -1.0}, NAN: {300: math.nan}, INF: {200: math.inf}},
        epochs_of={SHORT: 3},
        wrong_bits=[WRONG_BITS],
    )
    capsys.readouterr()
    assert sweep_cli(["analyze", str(sw.path), "--boot", "0", "--workers", "1"]) == 0
    assert "FAILED" not in capsys.readouterr().out
    out = sw.path / "analysis"
    runs = {r["run_id"]: r for r in rows(out / "runs.parquet")}
    assert all(r["status"] == "completed" for r in runs.values())
    # cut before the first unusable loss: 2.5 epochs left give no numbers, 3 epochs flagged ones
    assert "truncated at epoch 2.50 (non-positive loss)" in runs[ZERO]["curve_flag"]
    assert "short run" in runs[ZERO]["reason"] and math.isnan(runs[ZERO]["alpha_full"])
    assert "truncated at epoch 3.00 (non-positive loss)" in runs[NEG]["curve_flag"]
    assert "truncated at epoch 15.00 (non-finite loss)" in runs[NAN]["curve_flag"]
    assert "truncated at epoch 10.00 (non-finite loss)" in runs[INF]["curve_flag"]
    assert "short: ends at epoch 3.0" in runs[SHORT]["curve_flag"]
    assert not runs[WRONG_BITS]["units_agree"] and "not loss_train_nats / ln 2" in runs[WRONG_BITS]["units_reason"]
    assert runs[run_id("S-adamw", 0.1, 1e-3, 1)]["units_agree"]
    summary = {(r["variant"], r[LR]): r for r in rows(out / "summary.parquet")}
    nan_cell = summary[("S-core", 0.2)]  # NaN and inf runs: both flagged, neither in the median
    assert nan_cell["alpha_full_n_flagged"] == 2 and nan_cell["alpha_full_n"] == 0
    assert summary[("S-adamw", 0.1)]["knee_epoch_n_flagged"] == 1
    for name in ANALYSIS_PLOTS:
        assert (out / name).read_bytes().startswith(PNG), name
    section = (out / "section.md").read_text()
    assert "Plots that failed" not in section and "flagged" in section
    assert f"`{WRONG_BITS}`: loss_train_bits is not loss_train_nats / ln 2" in section
    assert "Loss-curve analysis" in (sw.path / "report" / "index.html").read_text()
    assert len(calls) == 1  # collect -> analyze -> report, one direction
