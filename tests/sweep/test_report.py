"""report(): every plot + index for a sweep with diverged, missing and failed runs, from collect's
tables; panels and heat maps follow the sweep's own axes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from fake_sweep import LR, WD, make_sweep, run_id

from deconcnn.analysis.collect import collect
from deconcnn.analysis.plots import Layout
from deconcnn.analysis.report import PLOTS, ReportError, load_runs, report

DIVERGED = run_id("S-adamw", 0.2, 1e-3, 1)
MISSING = run_id("S-core", 0.1, 1e-3, 1)
TRUNCATED = run_id("S-core", 0.2, 1e-3, 0)
PNG = b"\x89PNG\r\n\x1a\n"


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
