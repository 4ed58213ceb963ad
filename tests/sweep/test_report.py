"""report(): every plot + index for a sweep with diverged and missing runs, from collect's tables."""

from __future__ import annotations

import pyarrow.parquet as pq
from fake_sweep import make_sweep, run_id

from deconcnn.sweep.collect import collect
from deconcnn.sweep.report import PLOTS, report

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
    assert '<img src="train_loss.png"' in page
    # It used collect's (incremental) output: a second report re-reads nothing.
    assert (sw.path / "collected" / "runs.parquet").exists()
    assert collect(sw.path, progress=False).runs_read == []


def test_report_with_absent_kinds_and_custom_dirs(tmp_path):
    # No curvature or noise records at all (too short), one run failed, a whole lr/wd cell missing.
    sw = make_sweep(tmp_path / "sweep", variants=("S-bn-off",), lrs=(0.05, 0.2), wds=(1e-4, 1e-2),
                    seeds=(0,), epochs=1, steps_per_epoch=4, curv_every=100, noise_every=5,
                    failed=[run_id("S-bn-off", 0.05, 1e-4, 0)], missing=[run_id("S-bn-off", 0.2, 1e-2, 0)],
                    manifest=True)
    out = report(sw.path, out=tmp_path / "rep", collected=tmp_path / "col")
    assert out == tmp_path / "rep"
    assert pq.read_metadata(tmp_path / "col" / "curvature.parquet").num_rows == 0
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(PNG), name
    md = (out / "index.md").read_text()
    assert "### Failed (1)" in md and "### Missing (in the manifest, no run directory) (1)" in md
    assert "missing (1 missing)" in md  # the heat-map table marks the empty cell


def test_report_without_manifest_or_runs(tmp_path):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    out = report(tmp_path / "empty")
    for name in PLOTS:
        assert (out / name).exists()
    assert "Sweep report: empty" in (out / "index.md").read_text()
