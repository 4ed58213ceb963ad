"""deconcnn-sweep analyze: from a sweep's logs to the loss-curve answers, in one step.

    result = analyze("results/loss_lin_slope")    # -> <sweep>/analysis/*.parquet, *.png, section.md

Collects first (incremental), then for every run analyses its per-batch training loss
(deconcnn.analysis.per_run.analyze_run, in worker processes, on the effective time from the logged
lr: knee by a calibrated break test, power-law / exponential / broken power-law fits, alpha_early
over epochs 5-15, alpha_full from the knee to the end, flags, the units check against the logged
bits, the lambda_max plateau) and a window-robustness scan of alpha; then across runs: per cell
(variant x every non-seed axis) medians and spreads over seeds, each variant against the first one
with effect sizes and tests over seeds, and correlations of alpha with the noise metrics and the
curvature within cells (never pooled over them: lr alone moves both). Every run of the sweep gets
a row: failed, diverged, missing and too-short runs are carried through with their status and the
reason, never dropped; values a flag marks (deconcnn.analysis.columns) are left out of every
summary and counted. Bad curves never make the command fail, and the report is always written.

Outputs (``--out``, default ``<sweep>/analysis``; parquet or csv): ``runs`` (one row per run),
``fits`` (one row per run and model), ``knees`` (the knee test of every run),
``summary`` (per cell), ``comparisons``, ``correlations``, ``window_scan`` (median alpha per
cell and window); plots (ANALYSIS_PLOTS) and ``section.md``, which `report` includes in
report/index.html (the report is rewritten at the end, from this same collect). Columns and rules: docs/analysis.md.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deconcnn.analysis import fits as F
from deconcnn.analysis.collect import CollectResult, collect
from deconcnn.analysis.columns import CURVE_FLAG, FLAG_COLUMNS, add_flag, value_flags
from deconcnn.analysis.curves import time_axis
from deconcnn.analysis.per_run import (
    EARLY_EPOCHS,
    FIT_COLUMNS,
    KNEE_TABLE_COLUMNS,
    RUN_COLUMNS,
    analyze_run,
    compare_variants,
    summarize_cells,
    truncation,
)
from deconcnn.analysis.stats import correlation, partial_correlation
from deconcnn.runlog.atomic import tmp_path, write_text_atomic
from deconcnn.runlog.layout import ANALYSIS_DIR
from deconcnn.runlog.schema import CURVATURE_METRICS, NOISE_METRICS, is_finite

FORMATS = ("parquet", "csv")
ALPHAS = ("alpha_early", "alpha_full")
SUMMARY_VALUES = ("alpha_early", "alpha_full", "knee_epoch", "final_loss_nats")
#: The window-robustness scan: alpha over every (start, end) pair of these epochs with start < end.
SCAN_STARTS = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)
SCAN_ENDS = (10.0, 15.0, 20.0, 30.0, 40.0, 50.0)
DEFAULT_BOOT = 20
SECTION_FILE = "section.md"


@dataclass
class RunData:
    """What one run's analysis needs, read from the collected tables."""

    steps: np.ndarray
    losses: np.ndarray
    lr: np.ndarray | None = None  # the logged lr (lambda_max against 2/lr)
    bits: np.ndarray | None = None  # the logged loss_train_bits (units check)
    curvature_steps: np.ndarray | None = None
    lambda_max: np.ndarray | None = None


@dataclass
class AnalyzeResult:
    sweep_dir: Path
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    plot_errors: dict[str, str] = field(default_factory=dict)  # plot -> why it failed
    analysed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # status -> runs without training records
    seconds: float = 0.0

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(self.skipped.items())) or "none"
        lines = [f"analysed {self.analysed} runs in {self.seconds:.1f} s (no training records: {skipped})"]
        lines += [f"  {name:<12} {self.rows.get(name, 0):>8} rows  {path}" for name, path in self.files.items()]
        lines += [
            f"  plot         {p}" + (f"  FAILED: {self.plot_errors[p.name]}" if p.name in self.plot_errors else "")
            for p in self.plots
        ]
        return "\n".join(lines)


def steps_per_epoch(steps: np.ndarray, epoch_frac: np.ndarray) -> float:
    """From the stamps: a train record at step s has epoch_frac = (s + 1) / steps_per_epoch."""
    ok = np.isfinite(epoch_frac) & (epoch_frac > 0)
    return float(np.median((steps[ok] + 1) / epoch_frac[ok])) if ok.any() else math.nan


# read per run: lr gives the time axis and 2/lr, the bits the units check
TRAIN_COLUMNS = ("step", "epoch_frac", "loss_train_nats", "loss_train_bits", "lr")


def read_runs(res: CollectResult) -> tuple[dict[str, RunData], dict[str, float]]:
    """Each run's training curve (and lambda_max), streamed one row group of train.parquet at a time.

    Whole curves: analyze_run cuts a run before its first non-finite or non-positive loss (a
    diverged run stops being a power law) and says so in its curve_flag.
    """
    data: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    train = res.files.get("train")
    if train is not None and train.exists() and pq.read_metadata(train).num_rows:
        pf = pq.ParquetFile(train)
        present = [c for c in TRAIN_COLUMNS if c in pf.schema_arrow.names]
        for i in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(i, columns=["run_id", *present])
            ids = np.asarray(t.column("run_id").to_pylist(), dtype=object)
            cols = {c: t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in present}
            for rid in dict.fromkeys(ids):
                m = ids == rid
                for c, v in cols.items():
                    data[rid][c].append(v[m])
    runs: dict[str, RunData] = {}
    spe: dict[str, float] = {}
    for rid, cols in data.items():
        steps, frac, loss = (np.concatenate(cols[c]) for c in ("step", "epoch_frac", "loss_train_nats"))
        bits, lr = (np.concatenate(cols[c]) if c in cols else None for c in ("loss_train_bits", "lr"))
        # analyze_run cuts a diverged run before its first unusable value and flags it
        runs[rid] = RunData(steps, loss, lr=lr, bits=bits)
        spe[rid] = steps_per_epoch(steps, frac)
    curv = res.files.get("curvature")
    if curv is not None and curv.exists() and pq.read_metadata(curv).num_rows:
        t = pq.read_table(curv, columns=["run_id", "step", "lambda_max"])
        ids = np.asarray(t.column("run_id").to_pylist(), dtype=object)
        step = t.column("step").to_numpy(zero_copy_only=False).astype(float)
        lam = t.column("lambda_max").to_numpy(zero_copy_only=False).astype(float)
        for rid in runs:
            m = ids == rid
            if m.any():
                runs[rid].curvature_steps, runs[rid].lambda_max = step[m], lam[m]
    return runs, spe


def short_runs(curves: dict[str, RunData], spe: dict[str, float], ids: Sequence[str]) -> dict[str, str]:
    """Runs (of ``ids``) whose curve ends more than an epoch before the longest one's: their alphas
    and knee cover other epochs than the rest of the sweep's (curve_flag)."""
    ends = {r: float(curves[r].steps[-1]) / spe[r] for r in ids if len(curves[r].steps) and spe[r] > 0}
    longest = max(ends.values(), default=math.nan)
    return {r: f"short: ends at epoch {e:.1f} of the sweep's {longest:.1f}" for r, e in ends.items() if e < longest - 1}


def _one_run(rid: str, run: RunData, spe: float, n_boot: int, seed: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The per-run analysis and the window scan (in a worker process)."""
    out = analyze_run(
        run.steps,
        run.losses,
        spe,
        loss_bits=run.bits,
        lr=run.lr,
        curvature_steps=run.curvature_steps,
        lambda_max=run.lambda_max,
        n_boot=n_boot,
        seed=seed,
    )
    scan: dict[str, Any] = {}
    if math.isfinite(spe) and spe > 0 and len(run.steps) > 1 and not out["run"]["reason"]:
        # the same time axis and floor as alpha_early, on the part of the curve analyze_run used
        cut = len(run.steps) if len(run.steps) != len(run.losses) else truncation(run.losses, run.lr)[0]
        x, _, _ = time_axis(run.steps[:cut], None if run.lr is None else run.lr[:cut])
        c = out["run"]["alpha_early_c"]
        scan = F.window_scan(
            x,
            run.losses[:cut],
            [x[min(round(s * spe), cut - 1)] for s in SCAN_STARTS],
            [x[min(round(e * spe), cut) - 1] if e * spe <= cut else math.inf for e in SCAN_ENDS],
            c=c if math.isfinite(c) else None,
            c_se=out["run"]["alpha_early_c_se"] if math.isfinite(c) else 0.0,
        )
    return rid, out, scan


def _noise_summaries(res: CollectResult) -> dict[str, dict[str, float]]:
    """Per run, the median of each noise and curvature metric over its records."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for kind, keys in (("noise", NOISE_METRICS), ("curvature", CURVATURE_METRICS)):
        path = res.files.get(kind)
        if path is None or not path.exists() or not pq.read_metadata(path).num_rows:
            continue
        names = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=["run_id", *[k for k in keys if k in names]])
        ids = np.asarray(t.column("run_id").to_pylist(), dtype=object)
        for key in keys:
            if key not in names:
                continue
            values = t.column(key).to_numpy(zero_copy_only=False).astype(float)
            for rid in dict.fromkeys(ids):
                v = values[ids == rid]
                v = v[np.isfinite(v)]
                out[rid][f"{key}_median"] = float(np.median(v)) if len(v) else math.nan
    return out


def _write(rows: list[dict[str, Any]], path: Path, fmt: str, columns: Sequence[str] | None = None) -> int:
    """A table of rows (keys: `columns`, else the union of the rows' keys in first-seen order)."""
    names = list(columns or dict.fromkeys(k for row in rows for k in row))
    table = (
        pa.Table.from_pylist([{k: row.get(k) for k in names} for row in rows])
        if rows
        else pa.table({c: pa.array([], pa.string()) for c in names})
    )
    tmp = tmp_path(path)
    if fmt == "parquet":
        pq.write_table(table, tmp, compression="zstd")
    else:
        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)
    return table.num_rows


def analyze(
    sweep_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "parquet",
    workers: int | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    progress: bool = True,
    write_report: bool = True,
) -> AnalyzeResult:
    """Collect, analyse every run and the sweep, write the tables, plots and report section."""
    from deconcnn.analysis.analysis_plots import write_plots
    from deconcnn.analysis.report import report

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    res = collect(sweep_dir, fmt="parquet", progress=progress, workers=workers or 1)
    assert res.source is not None
    source = res.source
    out_dir = Path(out) if out is not None else source.path / ANALYSIS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    result = AnalyzeResult(source.path, out_dir)
    curves, spe = read_runs(res)
    noise = _noise_summaries(res)
    identity: dict[str, dict[str, Any]] = {
        r.run_id: {
            "run_id": r.run_id,
            "variant": r.variant,
            **{a: r.params.get(a) for a in source.axes},
            "status": r.state,
        }
        for r in source.runs
    }
    todo = [rid for rid in identity if rid in curves and len(curves[rid].steps)]
    analysed = _fit_runs(todo, curves, spe, n_boot, seed, workers, progress)
    result.analysed = len(analysed)

    group_keys = ["variant", *[a for a in source.axes if a.rsplit(".", 1)[-1] != "seed"]]
    short = short_runs(curves, spe, list(analysed))
    run_rows, fit_rows, knee_rows = [], [], []
    scans: dict[tuple[Any, ...], list[np.ndarray]] = defaultdict(list)
    for rid, ident in identity.items():
        if rid in analysed:
            out_run, scan = analysed[rid]
            row = {**ident, **out_run["run"], **noise.get(rid, {})}
            for flag in FLAG_COLUMNS:
                row.setdefault(flag, "")
            if rid in short:
                add_flag(row, CURVE_FLAG, short[rid])
            run_rows.append(row)
            fit_rows += [{**ident, **r} for r in out_run["fits"]]
            knee_rows += [{**ident, **r} for r in out_run["knee_table"]]
            if scan and ident["status"] == "completed" and not row[CURVE_FLAG]:
                scans[tuple(ident[k] for k in group_keys)].append(scan["alpha"])
        else:
            result.skipped[ident["status"]] = result.skipped.get(ident["status"], 0) + 1
            run_rows.append(
                {
                    **ident,
                    **dict.fromkeys(RUN_COLUMNS),
                    **noise.get(rid, {}),
                    **dict.fromkeys(FLAG_COLUMNS, ""),
                    "reason": "no training records",
                }
            )
    summary = summarize_cells(run_rows, group_keys, SUMMARY_VALUES)
    baseline = source.variants[0] if source.variants else None
    comparisons = (
        [row for key in (*ALPHAS, "knee_epoch") for row in compare_variants(run_rows, key, baseline, by=group_keys[1:])]
        if baseline
        else []
    )
    correlations = _correlations(run_rows, group_keys)
    window_rows = _window_rows(scans, group_keys)
    ext = "parquet" if fmt == "parquet" else "csv"
    tables = {
        "runs": (run_rows, None),
        "fits": (fit_rows, [*identity_columns(source), *FIT_COLUMNS]),
        "knees": (knee_rows, [*identity_columns(source), *KNEE_TABLE_COLUMNS]),
        "summary": (summary, None),
        "comparisons": (comparisons, None),
        "correlations": (correlations, None),
        "window_scan": (window_rows, None),
    }
    for name, (rows, cols) in tables.items():
        result.files[name] = out_dir / f"{name}.{ext}"
        result.rows[name] = _write(rows, result.files[name], fmt, cols)
    # the plots draw what analyze_run fitted: each curve before its first unusable value
    shown = {
        rid: RunData(r.steps[:cut], r.losses[:cut], lr=None if r.lr is None else r.lr[:cut])
        for rid, r in curves.items()
        for cut in [truncation(r.losses, r.lr)[0]]
    }
    result.plots, result.plot_errors = write_plots(out_dir, source, run_rows, fit_rows, shown, window_rows, group_keys)
    write_text_atomic(out_dir / SECTION_FILE, section(source, summary, run_rows, result), fsync=False)
    if write_report:
        report(source.path, collected=res.out_dir, result=res)
    result.seconds = time.perf_counter() - t0
    return result


def _fit_runs(
    todo: list[str],
    curves: dict[str, RunData],
    spe: dict[str, float],
    n_boot: int,
    seed: int,
    workers: int | None,
    progress: bool,
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each run's analysis and window scan (`_one_run`), in `workers` processes (default: one per CPU)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    analysed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, console=Console(stderr=True)) as bar:
        task = bar.add_task("fit runs", total=len(todo))
        n_workers = max(1, workers or os.cpu_count() or 1)
        if n_workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                for rid, out_run, scan in pool.map(
                    _one_run,
                    todo,
                    [curves[r] for r in todo],
                    [spe[r] for r in todo],
                    [n_boot] * len(todo),
                    [seed] * len(todo),
                ):
                    analysed[rid] = (out_run, scan)
                    bar.advance(task)
        else:
            for rid in todo:
                _, out_run, scan = _one_run(rid, curves[rid], spe[rid], n_boot, seed)
                analysed[rid] = (out_run, scan)
                bar.advance(task)
    return analysed


def identity_columns(source: Any) -> list[str]:
    return ["run_id", "variant", *source.axes, "status"]


def _window_rows(scans: dict[tuple[Any, ...], list[np.ndarray]], group_keys: Sequence[str]) -> list[dict[str, Any]]:
    """Per cell (never pooled over cells: lr and wd move alpha) and window: the median alpha over the
    cell's completed, unflagged seeds, its quartiles, how many seeds gave one (``n``) of how many
    (``n_runs``): a window some seeds do not reach has ``n < n_runs``."""
    rows = []
    for cell, grids in scans.items():
        stack = np.stack(grids)
        for i, s in enumerate(SCAN_STARTS):
            for j, e in enumerate(SCAN_ENDS):
                v = stack[:, i, j][np.isfinite(stack[:, i, j])]
                if e > s and v.size:
                    q25, med, q75 = np.percentile(v, [25, 50, 75])
                    rows.append(
                        {
                            **dict(zip(group_keys, cell, strict=True)),
                            "start_epoch": s,
                            "end_epoch": e,
                            "alpha_median": float(med),
                            "alpha_q25": float(q25),
                            "alpha_q75": float(q75),
                            "n": int(v.size),
                            "n_runs": len(grids),
                        }
                    )
    return rows


#: The scopes of the correlations table: never pooled over cells, where lr alone moves both sides.
WITHIN_CELL = "within cell (across seeds)"
PARTIAL_ON_CELLS = "partial on the cells (seeds' deviations from their cell's mean)"


def _correlations(rows: list[dict[str, Any]], group_keys: Sequence[str]) -> list[dict[str, Any]]:
    """alpha (early, full) against each noise and curvature median, and the knee against the
    lambda_max plateau, over completed runs with unflagged values: per cell across its seeds, and per
    variant (and over all variants) as a partial correlation on the cells (stats.partial_correlation).
    The ``scope`` column says which."""
    pairs = [(f"{x}_median", y) for y in ALPHAS for x in (*NOISE_METRICS, *CURVATURE_METRICS)]
    pairs.append(("lambda_max_plateau_epoch", "knee_epoch"))
    done = [r for r in rows if r["status"] == "completed"]

    def value(r: dict[str, Any], key: str) -> float:
        v = r.get(key)
        return math.nan if v is None or value_flags(r, key) else float(v)

    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        cells[tuple(r.get(k) for k in group_keys)].append(r)
    out = []
    for cell, members in cells.items():
        for x, y in pairs:
            xs, ys = [value(r, x) for r in members], [value(r, y) for r in members]
            ident = dict(zip(group_keys, cell, strict=True))
            out.append({"scope": WITHIN_CELL, **ident, "x": x, "y": y, **correlation(xs, ys), "n_cells": 1})
    variants = list(dict.fromkeys(r["variant"] for r in done))
    for variant in [*variants, "all"]:
        members = [r for r in done if variant == "all" or r["variant"] == variant]
        groups = [tuple(r.get(k) for k in group_keys) for r in members]
        for x, y in pairs:
            xs, ys = [value(r, x) for r in members], [value(r, y) for r in members]
            res = partial_correlation(xs, ys, groups)
            out.append({"scope": PARTIAL_ON_CELLS, "variant": variant, "x": x, "y": y, **res})
    return out


def _median_text(rows: list[dict[str, Any]], key: str) -> str:
    """Median [quartiles] over the completed runs whose value no flag marks; n and the flagged count
    when some are left out."""
    done = [r for r in rows if r["status"] == "completed"]
    kept = [r for r in done if not value_flags(r, key)]
    values = [r[key] for r in kept if is_finite(r.get(key))]
    flagged = len(done) - len(kept)
    notes = ([f"n={len(values)}"] if len(values) < len(done) else []) + ([f"{flagged} flagged"] if flagged else [])
    note = f" ({', '.join(notes)})" if notes else ""
    if not values:
        return "-" + note
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return f"{q50:.3f} [{q25:.3f}, {q75:.3f}]{note}"


def section(source: Any, summary: list[dict[str, Any]], run_rows: list[dict[str, Any]], result: AnalyzeResult) -> str:
    """The report's analysis section (markdown; links relative to the analysis directory)."""
    from deconcnn.analysis.analysis_plots import ANALYSIS_PLOTS

    e0, e1 = EARLY_EPOCHS
    lines = [
        "## Loss-curve analysis",
        "",
        f"`alpha_early`: power-law exponent over epochs {e0:g}-{e1:g}; `alpha_full`: from the knee (burn-in "
        "end, by AICc) to the end. Per variant: median [quartiles] over its completed runs in every cell "
        "(lr and wd move alpha: the per-cell medians over seeds are in `summary`; correlations are within "
        "cells or partial on them, see the `scope` column); n: runs with a value, when not all; flagged "
        "values (a `*_flag` column says why) are left out and counted. Rules and columns: "
        "docs/analysis.md; tables: " + ", ".join(f"[{p.name}]({p.name})" for p in result.files.values()) + ".",
        "",
        "| variant | completed / runs | alpha_early | alpha_full | knee epoch | final loss (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in source.variants:
        rows = [r for r in run_rows if r["variant"] == variant]
        done = sum(r["status"] == "completed" for r in rows)
        lines.append(
            f"| {variant} | {done} / {len(rows)} | {_median_text(rows, 'alpha_early')} | "
            f"{_median_text(rows, 'alpha_full')} | {_median_text(rows, 'knee_epoch')} | "
            f"{_median_text(rows, 'final_loss_nats')} |"
        )
    lines += [""]
    for name, title in ANALYSIS_PLOTS.items():
        lines += [f"### {title}", "", f"[![{title}]({name})]({name})", ""]
    if result.plot_errors:
        lines += ["Plots that failed (the tables are complete):", ""]
        lines += [f"- `{name}`: {err}" for name, err in result.plot_errors.items()]
        lines.append("")
    shapes: dict[str, int] = defaultdict(int)
    for r in run_rows:
        if r["status"] == "completed":
            shapes[r.get("lambda_max_shape") or "not described"] += 1
    if shapes:
        lines += ["lambda_max over training (completed runs): " + ", ".join(f"{k} {v}" for k, v in shapes.items()), ""]
    units = [r for r in run_rows if r["status"] == "completed" and r.get("units_reason")]
    if units:
        lines += [f"Completed runs whose units check failed ({len(units)}; first 10):", ""]
        lines += [f"- `{r['run_id']}`: {r['units_reason']}" for r in units[:10]]
        lines.append("")
    flagged = [r for r in run_rows if r["status"] == "completed" and any(r.get(f) for f in FLAG_COLUMNS)]
    if flagged:
        lines += [f"Completed runs with a flagged value ({len(flagged)}; first 20):", ""]
        lines += [
            f"- `{r['run_id']}`: " + "; ".join(f"{f}: {r[f]}" for f in FLAG_COLUMNS if r.get(f)) for r in flagged[:20]
        ]
        lines.append("")
    unfit = [r for r in run_rows if r["status"] == "completed" and not is_finite(r.get("alpha_full"))]
    if unfit:
        lines += [f"Completed runs without an alpha_full ({len(unfit)}):", ""]
        lines += [f"- `{r['run_id']}`: {r.get('reason') or r.get('alpha_full_reason')}" for r in unfit[:20]]
        lines.append("")
    return "\n".join(lines)
