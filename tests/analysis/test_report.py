"""report(): every plot + index for a sweep with diverged, missing and failed runs, from collect's
tables; panels and heat maps follow the sweep's own axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_sweep import LR, WD, make_sweep, run_id

from deconcnn.analysis.collect import collect
from deconcnn.analysis.plots import Layout, Run
from deconcnn.analysis.report import PLOTS, ReportError, data_banner, load_runs, report

DIVERGED = run_id("S-adamw", 0.2, 1e-3, 1)
MISSING = run_id("S-core", 0.1, 1e-3, 1)
TRUNCATED = run_id("S-core", 0.2, 1e-3, 0)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_writes_every_plot_and_index(tmp_path):
    sw = make_sweep(tmp_path / "sweep", diverged={DIVERGED: 5}, missing=[MISSING], truncated=[TRUNCATED])
    out = report(sw.path)
    assert out == sw.path / "report"
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    md, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    for text in (md, page):
        for name in PLOTS:
            assert name in text
        assert MISSING in text and DIVERGED in text and TRUNCATED in text
    assert "## Problem runs" in md and "diverged_step 5" in md
    assert '<img src="train_loss.png"' in page and "<table>" in page
    # It used collect's (incremental) output: a second report re-reads nothing.
    assert (sw.path / "collected" / "runs.parquet").exists()
    assert collect(sw.path, progress=False).runs_read == []


def test_report_with_absent_kinds_and_custom_dirs(tmp_path):
    # No curvature or noise records at all (too short), one run failed, a whole lr/wd cell missing.
    sw = make_sweep(
        tmp_path / "sweep",
        variants=("S-bn-off",),
        lrs=(0.05, 0.2),
        wds=(1e-4, 1e-2),
        seeds=(0,),
        epochs=1,
        steps_per_epoch=4,
        curv_every=100,
        noise_every=5,
        failed=[run_id("S-bn-off", 0.05, 1e-4, 0)],
        missing=[run_id("S-bn-off", 0.2, 1e-2, 0)],
    )
    out = report(sw.path, out=tmp_path / "rep", collected=tmp_path / "col")
    assert out == tmp_path / "rep"
    assert pq.read_metadata(tmp_path / "col" / "curvature.parquet").num_rows == 0
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(PNG), name
    md = (out / "index.md").read_text()
    assert "### Failed (1)" in md and "RuntimeError: CUDA error" in md
    assert "### Missing (never submitted) (1)" in md
    assert "no value (1 missing)" in md  # the heat-map table marks the empty cell, with why


@pytest.mark.slow
def test_layout_follows_the_sweep_s_axes(tmp_path):
    sw = make_sweep(
        tmp_path / "sweep",
        variants=("S-core", "S-wide"),
        lrs=(0.05, 0.1, 0.2),
        wds=(1e-3, 1e-2),
        seeds=(0, 1),
        extra_axes={"model.width": (0.5, 1.0)},
        epochs=1,
        steps_per_epoch=4,
    )
    runs, variants, axes = load_runs(collect(sw.path, progress=False))
    layout = Layout.of(runs, variants, axes)
    assert variants == ["S-core", "S-wide"]
    assert (layout.colour_axis, layout.style_axis, layout.facet_axes) == (LR, WD, ["model.width"])
    assert [Layout.title(v, f) for v, f in layout.facets()] == [
        "S-core width=0.5",
        "S-core width=1",
        "S-wide width=0.5",
        "S-wide width=1",
    ]
    # a variant with its own axis values gets panels for those only
    s_wide_at_half = [r for r in runs if r.variant != "S-wide" or r.params["model.width"] == 0.5]
    assert [Layout.title(v, f) for v, f in Layout.of(s_wide_at_half, variants, axes).facets()] == [
        "S-core width=0.5",
        "S-core width=1",
        "S-wide width=0.5",
    ]
    out = report(sw.path, heatmap=["model.width", LR])
    assert "Median best validation loss, model.width x optim.lr" in (out / "index.md").read_text()
    with pytest.raises(ReportError, match="--heatmap takes two of the sweep's axes"):
        report(sw.path, heatmap=["optim.nope", LR])


def test_a_no_data_panel_says_why(tmp_path):
    from deconcnn.analysis.plots import why_empty

    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), epochs=1, steps_per_epoch=4)
    res = collect(sw.path, progress=False)
    runs, _, _ = load_runs(res)
    from deconcnn.analysis.plots import reasons

    why = why_empty(runs, {runs[0].run_id: ()}, res.files["noise"], "noise", reasons(res.files["noise"]))
    assert why.startswith("only 4 losses in the buffer")
    assert "no curvature records" in why_empty(runs, {}, res.files["curvature"], "curvature")
    assert why_empty([], {}, None, "val") == "no runs in this panel"


def test_an_empty_heat_cell_says_why():
    from deconcnn.analysis.plots import Run, heat_grids

    why = "the curve ends at t=64, before the window's end (t=240)"
    runs = [
        Run("a", "S-core", {}, "completed", {"alpha_early": None, "alpha_early_reason": why}),
        Run("b", "S-core", {}, "failed", {}),
    ]
    (grid,) = heat_grids(
        Layout.of(runs, ["S-core"], []),
        None,
        None,
        lambda r: r.row.get("alpha_early"),
        lambda r: r.row.get("alpha_early_reason"),
    )
    assert grid.cells[(None, None)].why_empty() == f"1 completed, no value\n1 failed\n{why}"


# --------------------------------------------------------------------------- what the report says


@pytest.fixture
def drawn(monkeypatch):
    """Each figure the report saves, by file name, as it was saved (its axes, labels, legends)."""
    from matplotlib.figure import Figure

    figures = {}
    save = Figure.savefig

    def keep(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _edit_records(run_dir: Path, kind: str, edit) -> None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(edit(r) if r["kind"] == kind else r) + "\n" for r in records)
    )


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_the_report_says_when_the_data_is_synthetic(tmp_path):
    from deconcnn.training.data import Cifar10Source, SyntheticSource

    synthetic = SyntheticSource(num_samples=512).describe()  # what a run writes into run.json
    sw = make_sweep(tmp_path / "synthetic", variants=("S-core",), seeds=(0,), data=synthetic)
    page = (report(sw.path) / "index.html").read_text()
    assert page.count("Synthetic data") == 1
    assert (
        f"<blockquote>\n<p><strong>⚠ Synthetic data</strong>: 2 of 2 runs trained on generated data ({synthetic})"
        in page
    )
    runs = pq.read_table(sw.path / "collected" / "runs.parquet").to_pylist()
    assert [r["data"] for r in runs] == [synthetic, synthetic]
    # Real data, or runs that do not say (older than run.json's `data`): no banner.
    rows = [{"data": Cifar10Source(tmp_path).describe()}, {"data": None}, {}]
    assert data_banner([Run(str(i), "S-core", {}, "completed", row) for i, row in enumerate(rows)]) == []


@pytest.mark.slow
def test_one_non_seed_axis_names_no_absent_axis(tmp_path, drawn):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core", "S-adamw"), lrs=(0.1, 0.2), wds=(1e-3,), seeds=(0, 1))
    out = report(sw.path)
    md = (out / "index.md").read_text()
    heat_title = drawn["heatmap_best_val.png"].get_suptitle()
    assert "by optim.lr" in heat_title and "None" not in heat_title
    assert "## Median best validation loss, by optim.lr (completed runs / runs in cell)" in md
    assert "| optim.lr | median (completed / runs) |" in md
    assert "Panels per variant, colour = optim.lr; thin lines" in md
    assert "None" not in md and "none" not in md.split("## Runs by status")[0]
    # With two axes both are named.
    runs, variants, axes = load_runs(collect(sw.path, progress=False))
    for r in runs:
        r.params[WD] = 1e-2 if r.params["seed"] else 1e-3
    assert Layout.of(runs, variants, axes).encoding() == (
        "panels per variant, colour = optim.lr, line style = optim.weight_decay"
    )


@pytest.mark.slow
def test_plots_label_their_axes_with_names_and_units(tmp_path, drawn):
    from deconcnn.analysis.plots import axis_label
    from deconcnn.runlog.schema import CURVATURE_METRICS, NOISE_METRICS

    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), seeds=(0,))
    report(sw.path)

    def ylabels(name: str) -> list[str]:
        return [ax.get_ylabel() for ax in drawn[name].axes if ax.get_visible() and ax.get_ylabel()]

    assert axis_label("lambda_max") == "top Hessian eigenvalue λmax [nats/param²]"
    assert axis_label("noise_scale") == "gradient noise scale B_simple [samples]"
    assert axis_label("psd_tail") == "loss-noise PSD tail power [(ln-ratio)²]"
    for name, metrics in (("curvature.png", CURVATURE_METRICS), ("noise.png", NOISE_METRICS)):
        labels = ylabels(name)
        assert {label.split("\n")[0] for label in labels} == {axis_label(m) for m in metrics}, name
        assert not set(labels) & set(metrics), name  # no raw key names
        assert all("[" in label for label in labels), name  # every one has a unit
    assert set(ylabels("val_loss.png")) == {"validation loss [nats]"}
    assert set(ylabels("train_loss.png")) == {"training loss [nats]"}


@pytest.mark.slow
def test_the_trace_carries_its_logged_error_bars(tmp_path, drawn):
    from matplotlib.collections import LineCollection

    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,))
    rid = next(iter(sw.runs))

    def trace_axis(fig):
        return next(ax for ax in fig.axes if ax.get_ylabel().startswith("Hessian trace"))

    def bars(ax) -> list:
        return [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]

    # records with trace_se and no interval of their own (runs before trace_lo/hi): value ± 2 SE
    report(sw.path)
    fig = drawn["curvature.png"]
    rows = pq.read_table(sw.path / "collected" / "curvature.parquet").to_pylist()
    got = sorted((s[0][0], s[0][1], s[1][1]) for s in bars(trace_axis(fig)))
    want = sorted(
        (
            r["step"],
            r["hessian_trace"] - 2 * r["trace_se"],
            r["hessian_trace"] + 2 * r["trace_se"],
        )
        for r in rows
    )
    np.testing.assert_allclose(got, want)
    assert not bars(next(ax for ax in fig.axes if ax.get_ylabel().startswith("top Hessian")))  # none logged
    assert any(t.startswith("Hessian trace:") and t.endswith("±2 trace_se") for t in _legend_texts(fig.legends[0]))

    # An interval of its own (trace_lo/trace_hi) is drawn as logged; values of both signs get a
    # symlog axis that says so.
    _edit_records(
        sw.path / "runs" / rid,
        "curvature",
        lambda r: {
            **r,
            "hessian_trace": r["hessian_trace"] - 200,
            "trace_lo": r["hessian_trace"] - 230,
            "trace_hi": r["hessian_trace"] - 190,
        },
    )
    report(sw.path)
    fig = drawn["curvature.png"]
    rows = pq.read_table(sw.path / "collected" / "curvature.parquet").to_pylist()
    got = sorted((s[0][0], s[0][1], s[1][1]) for s in bars(trace_axis(fig)))
    np.testing.assert_allclose(got, sorted((r["step"], r["trace_lo"], r["trace_hi"]) for r in rows))
    assert any(
        t.startswith("Hessian trace: logged 95% interval (trace_lo, trace_hi)") for t in _legend_texts(fig.legends[0])
    )
    assert "(symlog: linear for |y| <" in trace_axis(fig).get_ylabel()


@pytest.mark.slow
def test_one_legend_names_each_learning_rate_once(tmp_path, drawn):
    sw = make_sweep(tmp_path / "shared", variants=("S-core", "S-adamw"), lrs=(0.1, 0.2), seeds=(0,))
    report(sw.path)
    for name in ("train_loss.png", "val_loss.png", "curvature.png", "noise.png"):
        fig = drawn[name]
        assert len(fig.legends) == 1 and not [ax for ax in fig.axes if ax.get_legend()], name
        texts = _legend_texts(fig.legends[0])
        assert texts.count("lr 0.1") == 1 and texts.count("lr 0.2") == 1, name
    # Variants with learning rates of their own (sweeps/demo.yaml): each panel names its own only.
    sw = make_sweep(
        tmp_path / "own", variants=("S-core", "S-adamw"), lrs={"S-core": (0.05, 0.1), "S-adamw": (1e-3, 3e-3)}
    )
    report(sw.path)
    fig = drawn["val_loss.png"]
    panels = {ax.get_title(loc="left"): _legend_texts(ax.get_legend()) for ax in fig.axes if ax.get_legend()}
    assert panels == {"S-core": ["lr 0.05", "lr 0.1"], "S-adamw": ["lr 1e-3", "lr 3e-3"]}
    assert not [t for t in _legend_texts(fig.legends[0]) if t.startswith("lr ")]
