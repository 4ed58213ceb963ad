"""Several sweeps as one: `collect A B` joins their tables with a `sweep` column, `report A B` overlays
them (one line style per sweep), and pandas reads the joined tables as the README says."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from fake_sweep import KINDS, LR, WD, make_sweep, run_id

from deconcnn.analysis.compare import collect_many
from deconcnn.analysis.plots import Layout, read_series, train_bins
from deconcnn.analysis.report import PLOTS, load_runs, report
from deconcnn.analysis.sources import SWEEP_COLUMN, run_key
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.errors import SweepError

SHARED = run_id("S-core", 0.1, 1e-3, 0)  # in "small" and "rerun": the same grid point, run again


@pytest.fixture
def two_sweeps(tmp_path):
    # small: lr x seed; grown: the grid grown (a larger lr, a width axis small lacks, a variant).
    a = make_sweep(tmp_path / "small", name="small", variants=("S-core",), lrs=(0.1, 0.2), seeds=(0, 1))
    b = make_sweep(
        tmp_path / "grown",
        name="grown",
        variants=("S-core", "S-adamw"),
        lrs=(0.1, 0.4),
        seeds=(0,),
        extra_axes={"model.width": (0.5, 1.0)},
        alphas={"S-core": 0.9, "S-adamw": 1.1},
        rng_seed=7,
    )
    return a, b


def test_sweeps_make_one_table_per_kind_with_a_sweep_column(two_sweeps, tmp_path):
    a, b = two_sweeps
    c = make_sweep(tmp_path / "rerun", name="rerun", variants=("S-core",), lrs=(0.1,), seeds=(0,), rng_seed=3)
    for config in (a.path / "runs").glob("*/.hydra/config.yaml"):  # small ran at width 0.75 without sweeping it
        config.write_text(config.read_text() + "model:\n  width: 0.75\n")
    res = collect_many([a.path, b.path, c.path])
    assert res.out_dir == a.path.parent / "compare-small+grown+rerun" / "collected"
    assert res.labels == ["small", "grown", "rerun"]
    for kind in KINDS:
        t = pq.read_table(res.files[kind])
        assert t.column_names[:3] == [SWEEP_COLUMN, "run_id", "variant"]
        assert t.num_rows == res.rows[kind] == a.total(kind) + b.total(kind) + c.total(kind), kind
        # Each (sweep, run) keeps exactly its own records, also for the run id both sweeps have.
        counted: dict[tuple[str, str], int] = {}
        for row in t.select([SWEEP_COLUMN, "run_id"]).to_pylist():
            key = (row[SWEEP_COLUMN], row["run_id"])
            counted[key] = counted.get(key, 0) + 1
        want = {("small", r): n[kind] for r, n in a.counts.items() if n[kind]}
        want |= {("grown", r): n[kind] for r, n in b.counts.items() if n[kind]}
        want |= {("rerun", r): n[kind] for r, n in c.counts.items() if n[kind]}
        assert counted == want, kind
    runs = pq.read_table(res.files["runs"]).to_pylist()
    assert len(runs) == len(a.runs) + len(b.runs) + len(c.runs)
    assert [(r[SWEEP_COLUMN], r[LR]) for r in runs if r["run_id"] == SHARED] == [("small", 0.1), ("rerun", 0.1)]
    # The axis only grown sweeps is a column; the others' rows hold what their runs ran with, where
    # their config says (small's), else null (rerun's fabricated config does not say).
    width = {s: {r["model.width"] for r in runs if r[SWEEP_COLUMN] == s} for s in res.labels}
    assert width == {"small": {0.75}, "grown": {0.5, 1.0}, "rerun": {None}}
    curvature = pq.read_table(res.files["curvature"], columns=[SWEEP_COLUMN, "model.width"]).to_pylist()
    assert {r["model.width"] for r in curvature if r[SWEEP_COLUMN] == "small"} == {0.75}
    assert pq.read_schema(res.files["runs"]).field(WD).type == "double"
    # The plot readers key runs by sweep too: the shared run id is two curves, not one merged.
    series = read_series(res.files["curvature"], "step", ["lambda_max"])
    assert len(series[run_key(SHARED, "small")]["step"]) == a.counts[SHARED]["curvature"]
    assert len(series[run_key(SHARED, "rerun")]["step"]) == c.counts[SHARED]["curvature"]
    assert len(series) == sum(len(s.counts) for s in (a, b, c))
    _, means = train_bins(res.files["train"])
    assert {run_key(SHARED, "small"), run_key(SHARED, "rerun")} <= set(means)


def test_collect_cli_takes_several_sweeps_and_rewrites_only_on_change(two_sweeps, capsys):
    a, b = two_sweeps
    assert sweep_cli(["collect", str(a.path), str(b.path)]) == 0
    out = capsys.readouterr().out
    assert "small: 4 runs" in out and "grown: 8 runs" in out and "column 'sweep'" in out
    train = a.path.parent / "compare-small+grown" / "collected" / "train.parquet"
    rows = pq.read_metadata(train).num_rows
    assert sweep_cli(["collect", str(a.path), str(b.path)]) == 0
    assert "tables unchanged" in capsys.readouterr().out
    with open(a.path / "runs" / SHARED / "metrics.jsonl", "a") as f:  # the run went on
        f.write(json.dumps({"kind": "train", "step": 999, "epoch": 9, "epoch_frac": 9.5, "time": 1.0}) + "\n")
    assert sweep_cli(["collect", str(a.path), str(b.path), "--format", "csv", "--out", str(a.path.parent / "t")]) == 0
    assert "tables unchanged" not in capsys.readouterr().out
    assert sweep_cli(["collect", str(a.path), str(b.path)]) == 0
    assert pq.read_metadata(train).num_rows == rows + 1
    assert (a.path.parent / "t" / "train.csv").read_text().startswith('"sweep","run_id"')


def test_sweeps_named_alike_are_told_apart_and_one_given_twice_is_refused(tmp_path):
    a = make_sweep(tmp_path / "v1" / "fake", variants=("S-core",), seeds=(0,))
    b = make_sweep(tmp_path / "v2" / "fake", variants=("S-core",), seeds=(0,))
    res = collect_many([a.path, b.path])
    assert res.labels == ["v1/fake", "v2/fake"]
    assert res.out_dir == tmp_path / "v1" / "compare-v1_fake+v2_fake" / "collected"
    with pytest.raises(SweepError, match="given twice"):
        collect_many([a.path, tmp_path / "v1" / ".." / "v1" / "fake"])


def test_report_overlays_two_sweeps_one_line_style_each(two_sweeps):
    a, b = two_sweeps
    out = report([a.path, b.path])
    assert out == a.path.parent / "compare-small+grown" / "report"
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    md = (out / "index.md").read_text()
    assert "# Sweep report: small vs grown" in md
    assert "- **small**: solid lines, 4 runs" in md and "- **grown**: dashed lines, 8 runs" in md
    assert "line style = sweep" in md
    assert "| sweep | variant | runs |" in md and "| grown | S-adamw | 4 |" in md
    runs, variants, axes = load_runs(collect_many([a.path, b.path]))
    layout = Layout.of(runs, variants, axes, style=SWEEP_COLUMN)
    assert (layout.colour_axis, layout.style_axis) == (LR, SWEEP_COLUMN)
    labels = [h.get_label() for h in layout.legend_handles()]
    assert "sweep small" in labels and "sweep grown" in labels


def test_pandas_reads_the_joined_tables(two_sweeps):
    pd = pytest.importorskip("pandas")  # the `analysis` extra (dev installs it)
    a, b = two_sweeps
    res = collect_many([a.path, b.path])
    df = pd.read_parquet(res.files["train"])
    assert df.groupby(SWEEP_COLUMN).size().to_dict() == {"small": a.total("train"), "grown": b.total("train")}
