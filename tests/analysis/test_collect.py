"""collect(): long tables per record kind + runs table, identity from the sweep's own axes, damaged logs
tolerated, incremental cache, Hydra multirun directories."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fake_sweep import KINDS, LR, WD, make_sweep, run_id

from deconcnn.analysis.collect import collect
from deconcnn.analysis.sources import read_source
from deconcnn.runlog.layout import DEFAULT_VARIANT, NotASweep
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import status_of

IDENTITY_COLUMNS = ("run_id", "variant", LR, WD, "seed", "status", "complete")

DIVERGED = run_id("S-adamw", 0.2, 1e-3, 1)
MISSING = run_id("S-core", 0.1, 1e-3, 1)
TRUNCATED = run_id("S-core", 0.2, 1e-3, 0)
DIV_STEP = 5


def _sweep(root: Path, nan_token: str = "NaN", **kw):
    # 2 variants x 2 lrs x 1 wd x 2 seeds; 2 epochs of 8 steps: train every step, val every
    # quarter epoch, curvature every 4 steps, noise + checkpoint every epoch.
    return make_sweep(
        root, diverged={DIVERGED: DIV_STEP}, missing=[MISSING], truncated=[TRUNCATED], nan_token=nan_token, **kw
    )


@pytest.fixture
def sweep(tmp_path):
    return _sweep(tmp_path / "sweep")


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def test_row_counts_equal_logged_records(sweep):
    res = collect(sweep.path, progress=False)
    out = sweep.path / "collected"
    for kind in KINDS:
        assert sweep.total(kind) > 0
        assert res.rows[kind] == sweep.total(kind), kind
        assert pq.read_metadata(out / f"{kind}.parquet").num_rows == sweep.total(kind)
        assert res.files[kind] == out / f"{kind}.parquet"
    assert res.rows["runs"] == len(sweep.runs) == 8
    assert res.runs_total == 8 and sorted(res.runs_read) == sorted(sweep.counts) and res.runs_cached == []
    # One row group per run: the tables were streamed run by run.
    assert pq.ParquetFile(out / "train.parquet").num_row_groups == len(sweep.counts)


def test_identity_columns_and_per_run_counts(sweep):
    collect(sweep.path, progress=False)
    out = sweep.path / "collected"
    for kind in KINDS:
        t = pq.read_table(out / f"{kind}.parquet")
        assert t.column_names[: len(IDENTITY_COLUMNS)] == list(IDENTITY_COLUMNS)
        assert "kind" not in t.column_names
        per_run: dict[str, int] = {}
        for row in t.select(list(IDENTITY_COLUMNS)).to_pylist():
            want = sweep.runs[row["run_id"]]
            assert (row["variant"], row[LR], row[WD], row["seed"], row["status"]) == (
                want["variant"],
                want["params"][LR],
                want["params"][WD],
                want["params"]["seed"],
                want["status"],
            )
            assert row["complete"] is (want["status"] == "completed")
            per_run[row["run_id"]] = per_run.get(row["run_id"], 0) + 1
        assert per_run == {r: c[kind] for r, c in sweep.counts.items() if c[kind]}
    train = pq.read_table(out / "train.parquet")
    # Record keys keep their names: `lr` is the step's learning rate, `optim.lr` the run's grid value.
    assert {"lr", "wd", "loss_train_nats", "step", "epoch", "epoch_frac", "time"} <= set(train.column_names)
    assert train.schema.field("step").type == "int64" and train.schema.field("loss_train_nats").type == "double"


def test_truncated_last_line_skipped_and_reported(sweep):
    res = collect(sweep.path, progress=False)
    assert res.bad_lines == {TRUNCATED: 1}
    assert res.truncated == [TRUNCATED]
    runs = {r["run_id"]: r for r in _rows(res.files["runs"])}
    assert runs[TRUNCATED]["n_bad_lines"] == 1 and runs[TRUNCATED]["truncated_tail"] is True
    assert runs[TRUNCATED]["status"] == "completed"
    assert all(r["n_bad_lines"] == 0 for k, r in runs.items() if k != TRUNCATED)


def test_missing_run_listed_without_rows(sweep):
    res = collect(sweep.path, progress=False)
    assert res.runs_missing == [MISSING]
    runs = {r["run_id"]: r for r in _rows(res.files["runs"])}
    m = runs[MISSING]
    assert (m["status"], m["complete"], m["in_manifest"], m["has_dir"], m["n_records"]) == (
        "missing",
        False,
        True,
        False,
        0,
    )
    assert (m["variant"], m[LR], m[WD], m["seed"]) == ("S-core", 0.1, 1e-3, 1)
    assert MISSING not in set(pq.read_table(res.files["train"], columns=["run_id"]).column(0).to_pylist())
    assert res.status_counts == {"completed": 6, "diverged": 1, "missing": 1}


@pytest.mark.parametrize("nan_token", ["NaN", "null"])
def test_diverged_run_nan_or_null(tmp_path, nan_token):
    sw = _sweep(tmp_path / "sweep", nan_token=nan_token)
    res = collect(sw.path, progress=False)
    assert res.bad_lines == {TRUNCATED: 1}  # NaN tokens and nulls both parse
    train = [r for r in _rows(res.files["train"]) if r["run_id"] == DIVERGED]
    assert len(train) == sw.counts[DIVERGED]["train"] == DIV_STEP + 3
    after = [r["loss_train_nats"] for r in train if r["step"] > DIV_STEP]
    assert after and all((v is None) if nan_token == "null" else math.isnan(v) for v in after)
    run = {r["run_id"]: r for r in _rows(res.files["runs"])}[DIVERGED]
    assert (run["status"], run["diverged_step"], run["first_nonfinite_step"]) == ("diverged", DIV_STEP, DIV_STEP + 1)
    assert run["complete"] is False and math.isfinite(run["best_loss_val_nats"])


def test_runs_table_final_and_best_val(sweep):
    res = collect(sweep.path, progress=False)
    rid = run_id("S-core", 0.1, 1e-3, 0)
    vals = [json.loads(line) for line in (sweep.path / "runs" / rid / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v["kind"] == "val"]
    best = min(vals, key=lambda v: v["loss_val_nats"])
    run = {r["run_id"]: r for r in _rows(res.files["runs"])}[rid]
    assert run["final_loss_val_nats"] == vals[-1]["loss_val_nats"]
    assert (run["best_loss_val_nats"], run["best_epoch_frac"], run["best_step"]) == (
        best["loss_val_nats"],
        best["epoch_frac"],
        best["step"],
    )
    assert run["steps_logged"] == sweep.counts[rid]["train"] == run["n_train"]
    assert run["max_step"] == 16 and run["wall_time_s"] > 0 and run["host"] == "node01"
    assert run["n_val"] == sweep.counts[rid]["val"]


def test_incremental_rereads_only_the_changed_run(sweep):
    first = collect(sweep.path, progress=False)
    assert len(first.runs_read) == 7
    again = collect(sweep.path, progress=False)
    assert again.runs_read == [] and len(again.runs_cached) == 7 and not again.assembled
    assert again.rows == first.rows and again.bad_lines == first.bad_lines

    changed = run_id("S-adamw", 0.1, 1e-3, 0)
    _append(
        sweep.path / "runs" / changed / "metrics.jsonl",
        {
            "kind": "train",
            "step": 17,
            "epoch": 2,
            "epoch_frac": 2.125,
            "time": 1.8e9,
            "loss_train_nats": 0.5,
            "loss_train_bits": 0.72,
            "acc_train": 0.9,
            "lr": 0.0,
            "wd": 1e-3,
        },
    )
    third = collect(sweep.path, progress=False)
    assert third.runs_read == [changed] and len(third.runs_cached) == 6 and third.assembled
    assert third.rows["train"] == first.rows["train"] + 1
    assert pq.read_metadata(third.files["train"]).num_rows == first.rows["train"] + 1

    # run.json alone changing (a status update) is a change too, and reaches every table.
    rj = sweep.path / "runs" / changed / "run.json"
    info = json.loads(rj.read_text())
    rj.write_text(json.dumps({**info, "status": "failed", "error": "boom"}))
    st = rj.stat()
    os.utime(rj, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fourth = collect(sweep.path, progress=False)
    assert fourth.runs_read == [changed]
    statuses = {r["status"] for r in _rows(fourth.files["val"]) if r["run_id"] == changed}
    assert statuses == {"failed"}
    assert {r["run_id"]: r for r in _rows(fourth.files["runs"])}[changed]["error"] == "boom"


def test_removed_run_drops_out_and_force_rereads(sweep):
    collect(sweep.path, progress=False)
    gone = run_id("S-core", 0.1, 1e-3, 0)
    shutil.rmtree(sweep.path / "runs" / gone)
    res = collect(sweep.path, progress=False)
    assert gone in res.runs_missing  # still in the manifest
    assert res.rows["train"] == sweep.total("train") - sweep.counts[gone]["train"]
    assert not (sweep.path / "collected" / ".cache" / gone).exists()
    forced = collect(sweep.path, progress=False, force=True)
    assert len(forced.runs_read) == 6 and forced.runs_cached == []


def test_schema_is_the_union_over_runs(sweep):
    # A later run (in sort order) carries keys the others lack, one with a type clash, and a new kind.
    late = run_id("S-core", 0.2, 1e-3, 1)
    early = run_id("S-adamw", 0.1, 1e-3, 0)
    stamp = {"step": 99, "epoch": 3, "epoch_frac": 3.0, "time": 1.8e9}
    _append(
        sweep.path / "runs" / late / "metrics.jsonl",
        {"kind": "noise", **stamp, "psd_tail": None, "reason": "too few losses", "new_metric": 1.5, "mixed": "text"},
    )
    _append(sweep.path / "runs" / early / "metrics.jsonl", {"kind": "noise", **stamp, "mixed": 3})
    _append(sweep.path / "runs" / early / "metrics.jsonl", {"kind": "probe", **stamp, "value": 1})
    res = collect(sweep.path, progress=False)
    noise = pq.read_table(res.files["noise"])
    assert noise.schema.field("new_metric").type == "double"
    assert noise.schema.field("mixed").type == "string"
    rows = noise.to_pylist()
    assert [r["new_metric"] for r in rows if r["run_id"] == late and r["step"] == 99] == [1.5]
    assert {r["mixed"] for r in rows if r["step"] == 99} == {"text", "3"}
    assert all(r["new_metric"] is None for r in rows if r["run_id"] != late)
    assert res.rows["noise"] == sweep.total("noise") + 2
    assert res.rows["probe"] == 1 and res.files["probe"].name == "probe.parquet"


def test_csv_format(sweep, tmp_path):
    out = tmp_path / "csv_out"
    res = collect(sweep.path, fmt="csv", out=out, progress=False)
    for kind in KINDS:
        t = pacsv.read_csv(out / f"{kind}.csv")
        assert t.num_rows == sweep.total(kind) == res.rows[kind]
        assert t.column_names[: len(IDENTITY_COLUMNS)] == list(IDENTITY_COLUMNS)
    runs = pacsv.read_csv(out / "runs.csv")
    assert runs.num_rows == 8
    assert (out / ".cache").is_dir() and not (sweep.path / "collected").exists()
    # Parquet and CSV share the per-run cache of one output dir.
    res2 = collect(sweep.path, fmt="parquet", out=out, progress=False)
    assert res2.runs_read == [] and res2.assembled and (out / "train.parquet").exists()


def test_damaged_run_files_never_fail(sweep):
    odd = sweep.path / "runs" / "not-a-grid-run"
    odd.mkdir()
    (odd / "run.json").write_text("{not json")
    (odd / "metrics.jsonl").write_text('{"step": 1}\n{"kind": "train", "step": 1, "loss_train_nats": 1.0}\n')
    res = collect(sweep.path, progress=False)
    run = {r["run_id"]: r for r in _rows(res.files["runs"])}["not-a-grid-run"]
    assert (run["status"], run["variant"], run[LR], run["n_train"], run["n_bad_lines"], run["in_manifest"]) == (
        "unknown",
        None,
        None,
        1,
        1,
        False,
    )  # a record without kind counts as a bad line


def test_parallel_workers_same_result(sweep, tmp_path):
    serial = collect(sweep.path, progress=False, out=tmp_path / "a")
    parallel = collect(sweep.path, progress=False, out=tmp_path / "b", workers=2)
    assert parallel.rows == serial.rows and sorted(parallel.runs_read) == sorted(serial.runs_read)
    for kind in (*KINDS, "runs"):  # same rows in the same order (json: NaN == NaN)
        a, b = (json.dumps(_rows(tmp_path / d / f"{kind}.parquet")) for d in "ab")
        assert a == b, kind


def test_errors(tmp_path):
    with pytest.raises(NotASweep):
        collect(tmp_path / "nope", progress=False)
    with pytest.raises(NotASweep):
        collect(tmp_path, progress=False)  # exists, holds no sweep
    with pytest.raises(ValueError):
        collect(tmp_path, fmt="xlsx", progress=False)


def test_no_torch_import():
    import subprocess

    code = (
        "import sys, deconcnn.analysis.collect, deconcnn.analysis.report, deconcnn.runlog.metrics_reader;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_fifth_variant_and_an_extra_axis_become_columns(tmp_path):
    sw = make_sweep(
        tmp_path / "sweep",
        variants=("S-core", "S-wide"),
        lrs=(0.1,),
        wds=(1e-3,),
        seeds=(0,),
        extra_axes={"model.width": (0.5, 1.0)},
    )
    res = collect(sw.path, progress=False)
    train = pq.read_table(res.files["train"])
    assert train.column_names[:7] == ["run_id", "variant", LR, WD, "model.width", "seed", "status"]
    assert train.schema.field("model.width").type == "double" and train.schema.field("seed").type == "int64"
    runs = _rows(res.files["runs"])
    assert sorted((r["variant"], r["model.width"]) for r in runs) == [
        ("S-core", 0.5),
        ("S-core", 1.0),
        ("S-wide", 0.5),
        ("S-wide", 1.0),
    ]


def test_an_identity_name_in_a_record_is_kept_as_logged(sweep):
    rid = run_id("S-core", 0.1, 1e-3, 0)
    _append(
        sweep.path / "runs" / rid / "metrics.jsonl",
        {"kind": "train", "step": 99, "epoch": 9, "epoch_frac": 9.0, "time": 1.8e9, "seed": 7, "loss_train_nats": 1.0},
    )
    train = _rows(collect(sweep.path, progress=False).files["train"])
    assert [(r["seed"], r["seed_logged"]) for r in train if r["step"] == 99] == [(0, 7)]


def test_a_finished_run_s_status_column_is_the_status_command_s_state(sweep, capsys):
    states = {r["run_id"]: r["state"] for r in status_of(sweep.path, capsys)["runs"]}
    runs = {r["run_id"]: r["status"] for r in _rows(collect(sweep.path, progress=False).files["runs"])}
    assert runs == states


def test_collect_asks_no_scheduler_and_shows_the_states_the_files_record(tmp_path, monkeypatch):
    running, failed = run_id("S-core", 0.1, 1e-3, 0), run_id("S-core", 0.2, 1e-3, 0)
    lost, cancelled = run_id("S-adamw", 0.1, 1e-3, 0), run_id("S-adamw", 0.2, 1e-3, 0)
    fake = make_sweep(tmp_path / "s", running=[running, cancelled], failed=[failed], lost=[lost], missing=[MISSING])
    sd = SweepDir(fake.path)
    manifest = sd.require_manifest()
    on_slurm = {  # every run on SLURM: asking the scheduler would run squeue/sacct
        run_id: replace(
            entry,
            submissions=tuple(
                replace(s, executor="slurm", handle="4242_0", job_id="4242_0") for s in entry.submissions
            ),
        )
        for run_id, entry in manifest.runs.items()
    }
    sd.write_manifest(replace(manifest, runs=on_slurm))
    sd.record_cancel([cancelled], by="a test")
    bin_dir, asked = tmp_path / "bin", tmp_path / "asked"
    bin_dir.mkdir()
    for tool in ("squeue", "sacct", "scontrol", "sinfo"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} >> {asked}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    runs = {r["run_id"]: r for r in _rows(collect(fake.path, progress=False).files["runs"])}
    assert not asked.exists()
    states = {rid: r["status"] for rid, r in runs.items()}
    assert (states[running], states[failed], states[lost], states[cancelled], states[MISSING]) == (
        "running",
        "failed",
        "pending",
        "cancelled",
        "missing",
    )
    assert "deconcnn-sweep status" in runs[lost]["reason"] and "deconcnn-sweep status" in runs[running]["reason"]
    assert runs[cancelled]["reason"] == "cancelled by a test"
    assert {s for rid, s in states.items() if rid not in (running, failed, lost, cancelled, MISSING)} == {"completed"}


def test_a_hydra_multirun_directory_is_a_sweep(tmp_path):
    """`deconcnn-train -m` leaves numbered job directories with .hydra/overrides.yaml."""
    root = tmp_path / "multirun" / "2026-11-30" / "10-00-00"
    src = make_sweep(tmp_path / "src", variants=("S-core",), lrs=(0.1, 0.2), wds=(1e-3,), seeds=(0,))
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for i, (rid, ident) in enumerate(sorted(src.runs.items())):
        job = root / str(i)
        (src.path / "runs" / rid).rename(job)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=loss_lin_slope_base\n- optim.lr={ident['params'][LR]}\n- seed=0\n"
        )
        (job / ".hydra" / "config.yaml").write_text("variant: S-core\nseed: 0\n")
    res = collect(root, progress=False)
    runs = _rows(res.files["runs"])
    assert [(r["run_id"], r["variant"], r[LR], r["status"]) for r in runs] == [
        ("0", "S-core", 0.1, "completed"),
        ("1", "S-core", 0.2, "completed"),
    ]
    assert "seed" not in runs[0]  # the same for every job: a setting, not an axis
    assert res.rows["train"] == src.total("train")


def test_a_multirun_job_whose_config_is_a_list_gets_the_default_variant(tmp_path):
    # Used to raise: a ListConfig has a get() too, and it takes an index.
    (tmp_path / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for i, config in enumerate(("variant: S-core\n", "- not a mapping\n")):
        hydra = tmp_path / str(i) / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "overrides.yaml").write_text(f"- seed={i}\n")
        (hydra / "config.yaml").write_text(config)
    source = read_source(tmp_path)
    assert [(r.run_id, r.variant) for r in source.runs] == [("0", "S-core"), ("1", DEFAULT_VARIANT)]
