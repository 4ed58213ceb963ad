"""Plots and an index page for a sweep, from ``collect``'s tables (collected incrementally first).

    report_dir = report("multirun/loss_lin_slope")   # -> <sweep>/report/{*.png,index.md,index.html}

Plots (one panel per variant; colour = learning rate, line style = weight decay):

- ``train_loss.png``: training loss (nats) vs step, log-log. Each run's per-batch loss is averaged
  in log-spaced step bins (thin line; step 0 falls in the first bin, drawn at step 1); the bold
  line is the median over the runs (seeds) with the same LR and WD.
- ``val_loss.png``: validation loss (nats) vs epoch, same convention, log y.
- ``curvature.png``: lambda_max (row 1) and Hessian trace (row 2) vs step.
- ``noise.png``: psd_tail, resid_power, grad_var, noise_scale vs epoch.
- ``heatmap_best_val.png``: per variant, LR x WD grid of the median over *completed* seeds of each
  run's best validation loss; each cell says n completed / n in the grid and how many diverged;
  cells with no completed run are hatched and say why (missing, diverged, failed, running).

Diverged runs are drawn to their last finite value and marked with an x there. A sweep with
missing, diverged or failed runs still reports; the index lists them. Never imports torch;
matplotlib is used through its object API on the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from deconcnn.sweep.collect import CollectResult, collect

__all__ = ["report", "PLOTS"]

VARIANT_ORDER = ("S-core", "S-adamw", "S-bn-off", "S-narrow")
PLOTS = {
    "train_loss.png": "Training loss (nats) vs step",
    "val_loss.png": "Validation loss (nats) vs epoch",
    "curvature.png": "Curvature: lambda_max and Hessian trace vs step",
    "noise.png": "Noise metrics vs epoch",
    "heatmap_best_val.png": "Best validation loss, median over completed seeds, LR x WD",
}
NOISE_METRICS = ("psd_tail", "resid_power", "grad_var", "noise_scale")
N_BINS = 160
_LINESTYLES = ("-", "--", ":", "-.")
_STATUS_ORDER = ("completed", "running", "diverged", "failed", "missing", "unknown")


@dataclass
class _Run:
    run_id: str
    variant: str
    lr: float | None
    wd: float | None
    seed: int | None
    status: str
    row: dict[str, Any]

    @property
    def group(self) -> tuple:
        return (self.lr, self.wd)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or self.row.get("first_nonfinite_step") is not None


def report(sweep_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
           collected: str | os.PathLike[str] | None = None, progress: bool = False,
           workers: int = 1) -> Path:
    """Collect ``sweep_dir`` (incremental, parquet, into ``collected`` or ``<sweep>/collected``) and
    write the plots and ``index.md``/``index.html`` into ``out`` (default ``<sweep>/report``).
    Returns the report directory."""
    res = collect(sweep_dir, fmt="parquet", out=collected, progress=progress, workers=workers)
    out_dir = Path(out) if out is not None else Path(sweep_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _load_runs(res)
    by_id = {r.run_id: r for r in runs}
    variants = _variant_order(runs) or ["(no runs)"]
    style = _Style(runs)

    _plot_train(res, out_dir / "train_loss.png", runs, by_id, variants, style)
    val = _read_series(res.files.get("val"), "epoch_frac", ["loss_val_nats"])
    _curve_figure(out_dir / "val_loss.png", PLOTS["val_loss.png"], variants, runs, style,
                  [("loss_val_nats", "validation loss (nats)", val)], xlabel="epoch", xlog=False)
    curv = _read_series(res.files.get("curvature"), "step", ["lambda_max", "hessian_trace"])
    _curve_figure(out_dir / "curvature.png", PLOTS["curvature.png"], variants, runs, style,
                  [("lambda_max", "lambda_max", curv), ("hessian_trace", "Hessian trace", curv)],
                  xlabel="step", xlog=False)
    noise = _read_series(res.files.get("noise"), "epoch_frac", list(NOISE_METRICS))
    _curve_figure(out_dir / "noise.png", PLOTS["noise.png"], variants, runs, style,
                  [(m, m, noise) for m in NOISE_METRICS], xlabel="epoch", xlog=False)
    cells = _heat_cells(runs, variants)
    _plot_heatmap(out_dir / "heatmap_best_val.png", variants, cells)
    _write_index(out_dir, res, runs, variants, cells)
    return out_dir


# --------------------------------------------------------------------------- data


def _load_runs(res: CollectResult) -> list[_Run]:
    rows = pq.read_table(res.files["runs"]).to_pylist()
    return [_Run(r["run_id"], r["variant"] or "(unparsed)", r["lr"], r["weight_decay"], r["seed"],
                 r["status"] or "unknown", r) for r in rows]


def _variant_order(runs: list[_Run]) -> list[str]:
    seen = {r.variant for r in runs}
    return [v for v in VARIANT_ORDER if v in seen] + sorted(seen - set(VARIANT_ORDER))


def _present_columns(path: Path | None, want: list[str]) -> list[str]:
    if path is None or not Path(path).exists():
        return []
    names = set(pq.read_schema(path).names)
    return [c for c in want if c in names]


def _read_series(path: Path | None, xcol: str, ycols: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> {xcol: sorted x, ycol: y...} for the small tables (val, curvature, noise)."""
    cols = _present_columns(path, ["run_id", xcol, *ycols])
    if "run_id" not in cols or xcol not in cols:
        return {}
    t = pq.read_table(path, columns=cols)
    if t.num_rows == 0:
        return {}
    names, codes = np.unique(np.asarray(t.column("run_id").to_pylist(), dtype=object), return_inverse=True)
    data = {c: t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in cols if c != "run_id"}
    order = np.lexsort((data[xcol], codes))  # by run, then x
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(rid): {c: v[order[bounds[i]:bounds[i + 1]]] for c, v in data.items()}
            for i, rid in enumerate(names)}


def _train_bins(res: CollectResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean training loss per run in log-spaced step bins, streamed one row group at a time."""
    path = res.files.get("train")
    cols = _present_columns(path, ["run_id", "step", "loss_train_nats"])
    if len(cols) < 3:
        return np.array([]), {}
    pf = pq.ParquetFile(path)
    max_step = 1
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(pf.schema_arrow.get_field_index("step")).statistics
        if st is not None and st.has_min_max:
            max_step = max(max_step, int(st.max))
        else:  # no statistics: read the column
            max_step = max(max_step, int(np.nanmax(pf.read_row_group(i, columns=["step"])
                                                    .column("step").to_numpy(zero_copy_only=False),
                                                    initial=1)))
    edges = np.unique(np.round(np.geomspace(1, max_step + 1, N_BINS + 1)).astype(np.int64))
    if len(edges) < 2:
        edges = np.array([1, 2])
    centers = np.sqrt(edges[:-1] * (edges[1:] - 1).clip(min=1))
    nb = len(edges) - 1
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(pf.metadata.num_row_groups):
        t = pf.read_row_group(i, columns=cols)
        ids = t.column("run_id").to_pylist()
        step = t.column("step").to_numpy(zero_copy_only=False).astype(float)
        loss = t.column("loss_train_nats").to_numpy(zero_copy_only=False).astype(float)
        uniq = dict.fromkeys(ids)
        ida = np.asarray(ids, dtype=object) if len(uniq) > 1 else None
        for rid in uniq:
            m = slice(None) if ida is None else ida == rid
            s, y = step[m], loss[m]
            ok = np.isfinite(s) & np.isfinite(y)
            b = np.clip(np.searchsorted(edges, np.maximum(s[ok], 1), side="right") - 1, 0, nb - 1)
            sums.setdefault(rid, np.zeros(nb))
            counts.setdefault(rid, np.zeros(nb))
            sums[rid] += np.bincount(b, weights=y[ok], minlength=nb)
            counts[rid] += np.bincount(b, minlength=nb)
    means = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for rid in sums:
            means[rid] = np.where(counts[rid] > 0, sums[rid] / counts[rid], np.nan)
    return centers, means


def _median_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.unique(np.concatenate([c[0] for c in curves]))
    xs = xs[np.isfinite(xs)]
    mat = np.full((len(curves), len(xs)), np.nan)
    for i, (x, y) in enumerate(curves):
        ok = np.isfinite(x)
        mat[i, np.searchsorted(xs, x[ok])] = y[ok]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(mat, axis=0) if len(xs) else np.array([])
    return xs, med


# --------------------------------------------------------------------------- plotting


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "?"
    if v != 0 and abs(v) < 1e-2:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:g}"


class _Style:
    """lr -> colour, wd -> line style, shared by every panel and the legend."""

    def __init__(self, runs: list[_Run]):
        from matplotlib import colormaps

        self.lrs = sorted({r.lr for r in runs}, key=lambda v: (v is None, v or 0))
        self.wds = sorted({r.wd for r in runs}, key=lambda v: (v is None, v or 0))
        cmap = colormaps["tab10"]
        self.color = {lr: cmap(i % 10) for i, lr in enumerate(self.lrs)}
        self.ls = {wd: _LINESTYLES[i % len(_LINESTYLES)] for i, wd in enumerate(self.wds)}

    def legend_handles(self) -> list:
        from matplotlib.lines import Line2D

        h = [Line2D([], [], color=self.color[lr], lw=2.5, label=f"lr {_fmt(lr)}") for lr in self.lrs]
        h += [Line2D([], [], color="0.25", ls=self.ls[wd], lw=1.8, label=f"wd {_fmt(wd)}")
              for wd in self.wds]
        h += [Line2D([], [], color="0.4", lw=0.7, alpha=0.6, label="one run"),
              Line2D([], [], color="0.2", lw=2.2, label="median over seeds"),
              Line2D([], [], color="crimson", marker="x", ls="none", ms=7, mew=2,
                     label="diverged (last finite value)")]
        return h


def _new_figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # At least ~9 in wide, so the title and the legend fit when there is a single variant.
    fig = Figure(figsize=(max(w * ncols, 9.0), h * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _grid(n: int) -> tuple[int, int]:
    if n <= 1:
        return 1, 1
    if n <= 4:
        return math.ceil(n / 2), 2
    return math.ceil(n / 3), 3


def _panel_note(runs: list[_Run], ids_with_data: set[str]) -> str:
    n = len(runs)
    parts = [f"{sum(r.run_id in ids_with_data for r in runs)}/{n} runs"]
    counts = defaultdict(int)
    for r in runs:
        if r.status != "completed":
            counts[r.status] += 1
    parts += [f"{v} {k}" for k, v in sorted(counts.items())]
    return ", ".join(parts)


def _robust_limits(values: list[np.ndarray], log: bool) -> tuple[float, float] | None:
    if not values:
        return None
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if log:
        v = v[v > 0]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [0.5, 99.5])
    if log:
        return lo / 1.3, hi * 1.3
    pad = 0.05 * (hi - lo) if hi > lo else (abs(hi) * 0.1 or 1.0)
    return lo - pad, hi + pad


def _draw_panel(ax, runs: list[_Run], curves: dict[str, tuple[np.ndarray, np.ndarray]],
                style: _Style, xlog: bool, title: str | None, xlabel: str, ylabel: str) -> None:
    groups: dict[tuple, list] = defaultdict(list)
    ys, drawn, marks = [], set(), []
    for r in runs:
        c = curves.get(r.run_id)
        if c is None:
            continue
        x, y = c
        ok = np.isfinite(x) & np.isfinite(y)
        if xlog:
            ok &= x > 0
        if not ok.any():
            continue
        drawn.add(r.run_id)
        ax.plot(x[ok], y[ok], color=style.color[r.lr], lw=0.6, alpha=0.35, zorder=1)
        ys.append(y[ok])
        groups[r.group].append((x[ok], y[ok]))
        if r.diverged:
            marks.append((x[ok][-1], y[ok][-1]))
    positive = bool(ys) and all((y > 0).all() for y in ys)
    for (lr, wd), cs in sorted(groups.items(), key=lambda kv: tuple(_nz(v) for v in kv[0])):
        xm, ym = _median_curve(cs)
        ok = np.isfinite(ym)
        ax.plot(xm[ok], ym[ok], color=style.color[lr], ls=style.ls[wd], lw=2.0, zorder=3)
    if xlog:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    if ys:
        if positive:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        else:
            allv = np.abs(np.concatenate(ys))
            allv = allv[allv > 0]
            ax.set_yscale("symlog", linthresh=float(np.percentile(allv, 10)) if len(allv) else 1.0)
        lim = _robust_limits(ys, positive)
        if lim is not None:
            ax.set_ylim(*lim)
            for x, y in marks:
                ax.plot(x, min(max(y, lim[0]), lim[1]), marker="x", color="crimson", ms=7, mew=2,
                        zorder=4, clip_on=False)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                color="0.5", fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=11, loc="left", fontweight="bold")
        ax.set_title(_panel_note(runs, drawn), fontsize=7.5, color="0.35", loc="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def _nz(v: float | None) -> float:
    return math.inf if v is None else float(v)


def _plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers ("0.3", "2", "1000") instead of 3x10^-1."""
    from matplotlib.ticker import LogFormatter

    class _Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    axis.set_major_formatter(_Plain(labelOnlyBase=False))
    axis.set_minor_formatter(_Plain(labelOnlyBase=False, minor_thresholds=(1.0, 0.4)))


def _finish(fig, path: Path, title: str, style: _Style) -> None:
    fig.suptitle(title, fontsize=13)
    handles = style.legend_handles()
    ncol = min(len(handles), max(3, int(fig.get_figwidth() / 1.2)))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8.5,
               frameon=False, columnspacing=1.4, handlelength=2.4)
    fig.savefig(path, dpi=110)


def _plot_train(res: CollectResult, path: Path, runs: list[_Run], by_id: dict[str, _Run],
                variants: list[str], style: _Style) -> None:
    centers, means = _train_bins(res)
    curves = {rid: (centers, m) for rid, m in means.items()}
    nr, nc = _grid(len(variants))
    fig, axes = _new_figure(nr, nc, 5.6, 4.0)
    for i, v in enumerate(variants):
        _draw_panel(axes.flat[i], [r for r in runs if r.variant == v], curves, style, True, v,
                    "step", "training loss (nats)")
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    _finish(fig, path, PLOTS["train_loss.png"] + " (runs: mean over log-spaced step bins)", style)


def _curve_figure(path: Path, title: str, variants: list[str], runs: list[_Run], style: _Style,
                  rows: list[tuple[str, str, dict]], xlabel: str, xlog: bool) -> None:
    """One row per metric, one column per variant (or a variant grid when there is one metric)."""
    if len(rows) == 1:
        nr, nc = _grid(len(variants))
        fig, axes = _new_figure(nr, nc, 5.6, 4.0)
        panels = [(axes.flat[i], v, rows[0]) for i, v in enumerate(variants)]
        for ax in list(axes.flat)[len(variants):]:
            ax.set_visible(False)
    else:
        fig, axes = _new_figure(len(rows), max(1, len(variants)), 4.4, 3.1)
        panels = [(axes[j, i], v, row) for j, row in enumerate(rows) for i, v in enumerate(variants)]
    xcol = "epoch_frac" if xlabel == "epoch" else "step"
    for k, (ax, v, (metric, label, series)) in enumerate(panels):
        curves = {rid: (d[xcol], d[metric]) for rid, d in series.items() if metric in d}
        # Several metric rows: the variant and its run counts head the column only once.
        head = len(rows) == 1 or k < len(variants)
        _draw_panel(ax, [r for r in runs if r.variant == v], curves, style, xlog,
                    v if head else None, xlabel, label)
    _finish(fig, path, title, style)


# --------------------------------------------------------------------------- heat map


@dataclass
class _Cell:
    runs: list[_Run]
    values: list[float]  # best val loss of completed runs

    @property
    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    def why_empty(self) -> str:
        if not self.runs:
            return "not in grid"
        counts = defaultdict(int)
        for r in self.runs:
            counts[r.status] += 1
        return "\n".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _heat_cells(runs: list[_Run], variants: list[str]) -> dict[str, tuple[list, list, dict]]:
    """variant -> (lrs, wds, {(lr, wd): _Cell})."""
    out = {}
    for v in variants:
        vr = [r for r in runs if r.variant == v]
        lrs = sorted({r.lr for r in vr}, key=_nz)
        wds = sorted({r.wd for r in vr}, key=_nz)
        cells = {}
        for lr in lrs:
            for wd in wds:
                rs = [r for r in vr if r.lr == lr and r.wd == wd]
                vals = [r.row["best_loss_val_nats"] for r in rs if r.status == "completed"
                        and r.row.get("best_loss_val_nats") is not None
                        and math.isfinite(r.row["best_loss_val_nats"])]
                cells[(lr, wd)] = _Cell(rs, vals)
        out[v] = (lrs, wds, cells)
    return out


def _plot_heatmap(path: Path, variants: list[str], cells: dict) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    vals = [c.median for v in variants for c in cells[v][2].values() if c.median is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5 * abs(lo or 1) * 0.1, hi + 0.5 * abs(hi or 1) * 0.1
    norm, cmap = Normalize(lo, hi), colormaps["viridis_r"]
    n = max(1, len(variants))
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = _new_figure(nrows, ncols, 4.0, 3.6)
    for i, v in enumerate(variants):
        ax = axes.flat[i]
        lrs, wds, cs = cells[v]
        ax.set_title(v, fontsize=11)
        if not lrs or not wds:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        grid = np.full((len(lrs), len(wds)), np.nan)
        for a, lr in enumerate(lrs):
            for b, wd in enumerate(wds):
                c = cs[(lr, wd)]
                if c.median is not None:
                    grid[a, b] = c.median
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        for a, lr in enumerate(lrs):
            for b, wd in enumerate(wds):
                c = cs[(lr, wd)]
                if c.median is None:
                    ax.add_patch(_hatch_rect(b, a))
                    ax.text(b, a, c.why_empty(), ha="center", va="center", fontsize=7.5, color="0.15")
                    continue
                rgba = cmap(norm(c.median))
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                txt = f"{c.median:.3f}\n{len(c.values)}/{len(c.runs)} completed"
                others = sorted({r.status for r in c.runs} - {"completed"})
                if others:
                    txt += "\n" + ", ".join(f"{c.count(s)} {s}" for s in others)
                ax.text(b, a, txt, ha="center", va="center", fontsize=8,
                        color="black" if lum > 0.5 else "white")
        ax.set_xticks(range(len(wds)), [_fmt(w) for w in wds])
        ax.set_yticks(range(len(lrs)), [_fmt(lr) for lr in lrs])
        ax.set_xlabel("weight decay")
        ax.set_ylabel("learning rate")
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8,
                 label="median best val loss (nats)")
    fig.suptitle(PLOTS["heatmap_best_val.png"] + "\n(hatched: no completed run in that cell)",
                 fontsize=12)
    fig.savefig(path, dpi=110)


def _hatch_rect(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="0.92", edgecolor="0.6", hatch="///",
                     lw=0.0, zorder=0.5)


# --------------------------------------------------------------------------- index


def _run_lists(runs: list[_Run]) -> list[tuple[str, list[tuple[str, str]]]]:
    def lst(pred, detail):
        return [(r.run_id, detail(r)) for r in runs if pred(r)]

    return [
        ("Missing (in the manifest, no run directory)", lst(lambda r: r.status == "missing", lambda r: "")),
        ("Diverged", lst(lambda r: r.status == "diverged",
                         lambda r: f"diverged_step {r.row.get('diverged_step')}, first non-finite "
                                   f"train loss at step {r.row.get('first_nonfinite_step')}")),
        ("Failed", lst(lambda r: r.status == "failed", lambda r: str(r.row.get("error") or ""))),
        ("Running", lst(lambda r: r.status == "running",
                        lambda r: f"last step {r.row.get('max_step')}")),
        ("Unknown status (no readable run.json)", lst(lambda r: r.status == "unknown", lambda r: "")),
        ("Non-finite training loss but status not 'diverged'",
         lst(lambda r: r.status != "diverged" and r.row.get("first_nonfinite_step") is not None,
             lambda r: f"status {r.status}, first non-finite at step {r.row.get('first_nonfinite_step')}")),
        ("Unreadable log lines skipped", lst(lambda r: (r.row.get("n_bad_lines") or 0) > 0,
                                             lambda r: f"{r.row['n_bad_lines']} lines"
                                             + (" (truncated last line)" if r.row.get("truncated_tail") else ""))),
    ]


def _status_table(runs: list[_Run], variants: list[str]) -> tuple[list[str], list[list[str]]]:
    statuses = [s for s in _STATUS_ORDER if any(r.status == s for r in runs)]
    statuses += sorted({r.status for r in runs} - set(statuses))
    header = ["variant", "runs", *statuses]
    body = []
    for v in [*variants, None]:
        vr = [r for r in runs if v is None or r.variant == v]
        body.append([v or "**all**", str(len(vr)), *[str(sum(r.status == s for r in vr)) for s in statuses]])
    return header, body


def _heat_tables(variants: list[str], cells: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for v in variants:
        lrs, wds, cs = cells[v]
        header = ["lr \\ wd", *[_fmt(w) for w in wds]]
        body = []
        for lr in lrs:
            row = [_fmt(lr)]
            for wd in wds:
                c = cs[(lr, wd)]
                row.append("—" if not c.runs else
                           (f"{c.median:.4f} ({len(c.values)}/{len(c.runs)})" if c.median is not None
                            else "missing (" + c.why_empty().replace("\n", ", ") + ")"))
            body.append(row)
        out.append((v, header, body))
    return out


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.replace('**', ''))}</td>" for c in r) + "</tr>"
                   for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>"


def _write_index(out_dir: Path, res: CollectResult, runs: list[_Run], variants: list[str],
                 cells: dict) -> None:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    rel = os.path.relpath(res.out_dir, out_dir)
    status_h, status_b = _status_table(runs, variants)
    lists = _run_lists(runs)
    heat = _heat_tables(variants, cells)
    rows_line = ", ".join(f"{k} {n}" for k, n in res.rows.items())
    note = ("Colour = learning rate, line style = weight decay; thin lines are single runs (training "
            "loss: mean over log-spaced step bins), bold lines the median over the seeds with the same "
            "LR and WD; x marks a diverged run's last finite value. The heat map and its tables use "
            "only completed runs (best validation loss per run, median over seeds).")

    md = [f"# Sweep report: {res.sweep_name}", "",
          f"Generated {now} from `{rel}/` ({rows_line} rows).", "", note, "",
          "## Runs by status", "", _md_table(status_h, status_b), "", "## Plots", ""]
    md += [f"- [{t}]({f})" for f, t in PLOTS.items()] + [""]
    md += [f"### {t}\n\n![{t}]({f})\n" for f, t in PLOTS.items()]
    md += ["## Median best validation loss (completed runs / runs in cell)", ""]
    for v, h, b in heat:
        md += [f"### {v}", "", _md_table(h, b), ""]
    md += ["## Problem runs", ""]
    for title, items in lists:
        md += [f"### {title} ({len(items)})", ""]
        md += [f"- `{rid}`" + (f": {d}" if d else "") for rid, d in items] or ["none"]
        md += [""]
    (out_dir / "index.md").write_text("\n".join(md))

    e = html.escape
    body = [f"<h1>Sweep report: {e(res.sweep_name)}</h1>",
            f"<p>Generated {e(now)} from <code>{e(rel)}/</code> ({e(rows_line)} rows).</p>",
            f"<p>{e(note)}</p>", "<h2>Runs by status</h2>", _html_table(status_h, status_b),
            "<h2>Plots</h2><ul>"]
    body += [f'<li><a href="{e(f)}">{e(t)}</a></li>' for f, t in PLOTS.items()] + ["</ul>"]
    body += [f'<h3>{e(t)}</h3><a href="{e(f)}"><img src="{e(f)}" alt="{e(t)}"></a>'
             for f, t in PLOTS.items()]
    body += ["<h2>Median best validation loss (completed runs / runs in cell)</h2>"]
    for v, h, b in heat:
        body += [f"<h3>{e(v)}</h3>", _html_table(h, b)]
    body += ["<h2>Problem runs</h2>"]
    for title, items in lists:
        body += [f"<h3>{e(title)} ({len(items)})</h3>"]
        body += (["<ul>"] + [f"<li><code>{e(rid)}</code>" + (f": {e(d)}" if d else "") + "</li>"
                             for rid, d in items] + ["</ul>"]) if items else ["<p>none</p>"]
    style = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
             "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(res.sweep_name)} report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    (out_dir / "index.html").write_text(page)
