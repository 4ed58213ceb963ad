"""The report's figures, from collect's tables; no torch, and matplotlib through its object API on
the Agg canvas (no pyplot, no global backend change).

A figure's panels follow the sweep's own axes (`Layout`): one panel per variant (and per value of
any axis beyond the first two); colour = the non-seed axis with the most values, line style = the
next one; thin lines are single runs, bold lines the median over the seeds of a group. Sparse
series carry markers, so a single point shows; a panel without data says why.
"""

from __future__ import annotations

import itertools
import math
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deconcnn.analysis.sources import SWEEP_COLUMN
from deconcnn.runlog import schema
from deconcnn.runlog.schema import is_finite

N_BINS = 160
#: Sparse series carry markers (a lone point shows) up to this many points; denser ones would hide
#: their line style under the markers.
MARKERS_UP_TO = 60
#: Figures of several metrics put up to this many panels side by side; more go one under another.
WIDE_UP_TO = 6
_LINESTYLES = ("-", "--", ":", "-.")
LINESTYLE_NAMES = dict(zip(_LINESTYLES, ("solid", "dashed", "dotted", "dash-dot")))
SEED_AXIS = "seed"
_ID_COLUMNS = ("run_id", SWEEP_COLUMN)

#: What the plotted record keys are called on an axis; their units are the schema's.
METRIC_NAMES = {
    "loss_train_nats": "training loss",
    "loss_val_nats": "validation loss",
    "lambda_max": "top Hessian eigenvalue λmax",
    "hessian_trace": "Hessian trace",
    "psd_tail": "loss-noise PSD tail power",
    "resid_power": "loss-noise residual power",
    "grad_var": "per-sample gradient variance",
    "noise_scale": "gradient noise scale B_simple",
}
_UNITS = {k.name: k.unit for kind in schema.KINDS.values() for k in kind.keys}


def axis_label(key: str) -> str:
    """`name [unit]` of a record key: "Hessian trace [nats/param²]"."""
    unit = _UNITS.get(key, "-")
    unit = unit.replace(" / ", "/").replace("parameter unit", "param").replace("^2", "²")
    name = METRIC_NAMES.get(key, key)
    return name if unit == "-" else f"{name} [{unit}]"


@dataclass(frozen=True)
class ErrorBar:
    """A logged error bar: the interval [lo, hi] a record carries, else (a record without one, e.g.
    from an older run) its value ± k standard errors."""

    lo: str | None = None
    hi: str | None = None
    se: str | None = None
    k: float = 2.0

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.lo, self.hi, self.se) if c]

    @property
    def meaning(self) -> str:
        parts = [f"logged 95% interval ({self.lo}, {self.hi})"] if self.lo and self.hi else []
        parts += [f"±{self.k:g} {self.se}"] if self.se else []
        return ", else ".join(parts)

    def bounds(self, y: np.ndarray, d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo = hi = np.full(y.shape, np.nan)
        if self.se:
            lo, hi = y - self.k * d[self.se], y + self.k * d[self.se]
        if self.lo and self.hi:
            have = np.isfinite(d[self.lo]) & np.isfinite(d[self.hi])
            lo, hi = np.where(have, d[self.lo], lo), np.where(have, d[self.hi], hi)
        return lo, hi


ERROR_BARS = {"hessian_trace": ErrorBar(lo="trace_lo", hi="trace_hi", se="trace_se")}


def error_bar(path: Path | None, key: str) -> ErrorBar | None:
    """`key`'s ERROR_BARS restricted to the columns the table holds, or None when it holds none."""
    bar = ERROR_BARS.get(key)
    if bar is None:
        return None
    have = set(present_columns(path, bar.columns))
    both = bar.lo in have and bar.hi in have
    kept = ErrorBar(lo=bar.lo if both else None, hi=bar.hi if both else None, se=bar.se if bar.se in have else None)
    return kept if kept.columns else None


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "?"
    if isinstance(v, float) and v != 0 and abs(v) < 1e-2:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _key(v: Any) -> tuple:
    return (v is None, isinstance(v, str), v if v is not None else 0)


@dataclass
class Run:
    run_id: str
    variant: str
    params: dict[str, Any]
    status: str
    row: dict[str, Any]

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or self.row.get("first_nonfinite_step") is not None


@dataclass
class Layout:
    """How runs map to panels, colours and line styles, from the sweep's axes."""

    runs: list[Run]
    variants: list[str]
    colour_axis: str | None
    style_axis: str | None
    facet_axes: list[str]
    colour: dict[Any, Any] = field(default_factory=dict)
    style: dict[Any, str] = field(default_factory=dict)
    given_order: str | None = None  # an axis whose values keep the runs' order (the sweeps as given)

    @classmethod
    def of(cls, runs: list[Run], variants: list[str], axes: Sequence[str], style: str | None = None) -> Layout:
        """`style`: the axis drawn as line styles (the sweep, when sweeps are compared), whatever its size."""
        counts = {a: len({repr(r.params.get(a)) for r in runs}) for a in axes}
        # An axis of one value tells the runs apart no more than the seed does.
        factors = [a for a in axes if a.rsplit(".", 1)[-1] != SEED_AXIS and a != style and counts[a] > 1]
        factors.sort(key=lambda a: -counts[a])  # stable: the sweep file's order breaks ties
        if style is not None:
            factors.insert(1, style)
        colour = factors[0] if factors and factors[0] != style else None
        layout = cls(
            runs, variants, colour, style or (factors[1] if len(factors) > 1 else None), factors[2:], given_order=style
        )
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        layout.colour = {v: cmap(i % 10) for i, v in enumerate(layout.values(layout.colour_axis))}
        layout.style = {v: _LINESTYLES[i % len(_LINESTYLES)] for i, v in enumerate(layout.values(layout.style_axis))}
        return layout

    def encoding(self) -> str:
        """What panels, colours and line styles stand for, naming only what this layout uses."""
        parts = ["panels per variant" + "".join(f" and {a}" for a in self.facet_axes)]
        if self.colour_axis:
            parts.append(f"colour = {self.colour_axis}")
        if self.style_axis:
            parts.append(f"line style = {self.style_axis}")
        return ", ".join(parts)

    def values(self, axis: str | None) -> list[Any]:
        if axis is None:
            return [None]
        if axis == self.given_order:
            return list(dict.fromkeys(r.params.get(axis) for r in self.runs))
        return sorted({r.params.get(axis) for r in self.runs}, key=_key)

    def colour_of(self, run: Run) -> Any:
        return self.colour[run.params.get(self.colour_axis) if self.colour_axis else None]

    def style_of(self, run: Run) -> str:
        return self.style[run.params.get(self.style_axis) if self.style_axis else None]

    def group(self, run: Run) -> tuple:
        """Runs that differ only in their seed share a group (their median is drawn)."""
        return tuple(run.params.get(a) for a in (self.colour_axis, self.style_axis, *self.facet_axes) if a)

    def facets(self) -> list[tuple[str, dict[str, Any]]]:
        """(variant, {facet axis: value}) for every panel, in the sweep's order: the cells a variant
        has runs in (a variant may carry its own axis values), all of them for a variant without runs."""
        combos = [dict(zip(self.facet_axes, c)) for c in itertools.product(*map(self.values, self.facet_axes))]
        return [(v, c) for v in self.variants for c in [c for c in combos if self.runs_of(v, c)] or combos]

    def runs_of(self, variant: str, fixed: dict[str, Any]) -> list[Run]:
        return [r for r in self.runs if r.variant == variant and all(r.params.get(a) == v for a, v in fixed.items())]

    @staticmethod
    def title(variant: str, fixed: dict[str, Any]) -> str:
        return " ".join([variant, *(f"{a.rsplit('.', 1)[-1]}={fmt(v)}" for a, v in fixed.items())])

    def colours_per_panel(self) -> bool:
        """Whether panels differ in their colour values (variants carrying their own learning rates):
        then each panel's legend names its own, rather than one legend naming them all."""
        if not self.colour_axis:
            return False
        sets = {frozenset(repr(r.params.get(self.colour_axis)) for r in self.runs_of(*f)) for f in self.facets()}
        return len(sets - {frozenset()}) > 1

    def colour_handles(self, runs: list[Run] | None = None) -> list:
        """A legend entry per colour value (of `runs` only, when given)."""
        from matplotlib.lines import Line2D

        if not self.colour_axis:
            return []
        short = self.colour_axis.rsplit(".", 1)[-1]
        present = None if runs is None else {r.params.get(self.colour_axis) for r in runs}
        return [
            Line2D([], [], color=c, lw=2.5, label=f"{short} {fmt(v)}")
            for v, c in self.colour.items()
            if present is None or v in present
        ]

    def legend_handles(self, colours: bool = True) -> list:
        """The figure's shared legend; `colours=False` when each panel names its own."""
        from matplotlib.lines import Line2D

        h = self.colour_handles() if colours else []
        if self.style_axis:
            short = self.style_axis.rsplit(".", 1)[-1]
            h += [Line2D([], [], color="0.25", ls=s, lw=1.8, label=f"{short} {fmt(v)}") for v, s in self.style.items()]
        h += [
            Line2D([], [], color="0.4", lw=0.7, alpha=0.6, label="one run"),
            Line2D([], [], color="0.2", lw=2.2, label="median over seeds"),
            Line2D([], [], color="crimson", marker="x", ls="none", ms=7, mew=2, label="diverged (last finite value)"),
        ]
        return h


# --------------------------------------------------------------------------- data


def present_columns(path: Path | None, want: list[str]) -> list[str]:
    if path is None or not Path(path).exists():
        return []
    names = set(pq.read_schema(path).names)
    return [c for c in want if c in names]


def run_keys(table: pa.Table) -> np.ndarray:
    """Each row's run (sources.run_key): its run_id, or <sweep>/<run_id> in a table across sweeps."""
    ids = table.column("run_id")
    if SWEEP_COLUMN in table.column_names:
        ids = pc.binary_join_element_wise(table.column(SWEEP_COLUMN), ids, "/")
    return np.asarray(ids.to_pylist(), dtype=object)


def read_series(path: Path | None, xcol: str, ycols: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> {xcol: sorted x, ycol: y...} for the small tables (val, curvature, noise)."""
    cols = present_columns(path, ["run_id", SWEEP_COLUMN, xcol, *ycols])
    if "run_id" not in cols or xcol not in cols:
        return {}
    t = pq.read_table(path, columns=cols)
    if t.num_rows == 0:
        return {}
    names, codes = np.unique(run_keys(t), return_inverse=True)
    data = {c: t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in cols if c not in _ID_COLUMNS}
    order = np.lexsort((data[xcol], codes))  # by run, then x
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(rid): {c: v[order[bounds[i] : bounds[i + 1]]] for c, v in data.items()} for i, rid in enumerate(names)}


def reasons(path: Path | None, column: str = "reason") -> dict[str, list[str]]:
    """run_id -> the distinct reasons its records give for null values (noise, curvature)."""
    cols = present_columns(path, ["run_id", SWEEP_COLUMN, column])
    if column not in cols or "run_id" not in cols:
        return {}
    out: dict[str, list[str]] = defaultdict(list)
    t = pq.read_table(path, columns=cols)
    for rid, why in zip(run_keys(t), t.column(column).to_pylist()):
        if why and why not in out[rid]:
            out[rid].append(why)
    return out


def train_bins(path: Path | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean training loss per run in log-spaced step bins, streamed one row group at a time."""
    cols = present_columns(path, ["run_id", SWEEP_COLUMN, "step", "loss_train_nats"])
    if not {"run_id", "step", "loss_train_nats"} <= set(cols):
        return np.array([]), {}
    pf = pq.ParquetFile(path)
    max_step = 1
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(pf.schema_arrow.get_field_index("step")).statistics
        if st is not None and st.has_min_max:
            max_step = max(max_step, int(st.max))
        else:  # no statistics: read the column
            max_step = max(
                max_step,
                int(
                    np.nanmax(
                        pf.read_row_group(i, columns=["step"]).column("step").to_numpy(zero_copy_only=False), initial=1
                    )
                ),
            )
    edges = np.unique(np.round(np.geomspace(1, max_step + 1, N_BINS + 1)).astype(np.int64))
    if len(edges) < 2:
        edges = np.array([1, 2])
    centers = np.sqrt(edges[:-1] * (edges[1:] - 1).clip(min=1))
    nb = len(edges) - 1
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(pf.metadata.num_row_groups):
        t = pf.read_row_group(i, columns=cols)
        ids = run_keys(t).tolist()
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


def median_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- drawing


def new_figure(nrows: int, ncols: int, w: float, h: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # At least ~9 in wide, so the title and the legend fit when there is a single panel.
    fig = Figure(figsize=(max(w * ncols, 9.0), h * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def grid(n: int) -> tuple[int, int]:
    if n <= 1:
        return 1, 1
    if n <= 4:
        return math.ceil(n / 2), 2
    return math.ceil(n / 3), 3


def _panel_note(runs: list[Run], ids_with_data: set[str]) -> str:
    parts = [f"{sum(r.run_id in ids_with_data for r in runs)}/{len(runs)} runs"]
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        if r.status != "completed":
            counts[r.status] += 1
    return ", ".join(parts + [f"{v} {k}" for k, v in sorted(counts.items())])


def _robust_limits(values: list[np.ndarray], log: bool) -> tuple[float, float] | None:
    v = np.concatenate(values) if values else np.array([])
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


def robust_range(values: Sequence[float]) -> tuple[float, float]:
    """Colour limits that one outlier cannot stretch: the range clipped to the quartiles -/+ 3 IQR
    (all values when there are fewer than 4 or no spread)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if v.size >= 4:
        q1, q3 = np.percentile(v, [25, 75])
        if q3 > q1:
            lo, hi = max(lo, q1 - 3 * (q3 - q1)), min(hi, q3 + 3 * (q3 - q1))
    if hi <= lo:
        lo, hi = lo - 0.05 * abs(lo or 1), hi + 0.05 * abs(hi or 1)
    return lo, hi


def no_data(ax: Any, why: str) -> None:
    ax.text(
        0.5,
        0.5,
        "\n".join(["no data", *(textwrap.fill(line, 40) for line in why.splitlines())]),
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.4",
        fontsize=8.5,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def draw_panel(
    ax: Any,
    runs: list[Run],
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    layout: Layout,
    xlog: bool,
    title: str | None,
    xlabel: str,
    ylabel: str,
    empty_reason: str,
    markers: bool,
    bars: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """One panel: each run thin (with its logged error bars, `bars`: run -> (lo, hi)), each group's
    median bold; `empty_reason` when nothing is drawn."""
    groups: dict[tuple, list] = defaultdict(list)
    ys, drawn, marks = [], set(), []
    first_of_group: dict[tuple, Run] = {}
    marker = dict(marker="o", ms=2.5) if markers else {}
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
        ax.plot(
            x[ok],
            y[ok],
            color=layout.colour_of(r),
            lw=0.6,
            alpha=0.35,
            zorder=1,
            **(marker if (markers and ok.sum() <= MARKERS_UP_TO) or ok.sum() == 1 else {}),
        )
        ys.append(y[ok])
        if bars and r.run_id in bars:
            lo, hi = bars[r.run_id]
            has = ok & np.isfinite(lo) & np.isfinite(hi)
            ax.vlines(x[has], lo[has], hi[has], color=layout.colour_of(r), lw=0.8, alpha=0.45, zorder=1)
            ys += [lo[has], hi[has]]
        groups[layout.group(r)].append((x[ok], y[ok]))
        first_of_group.setdefault(layout.group(r), r)
        if r.diverged:
            marks.append((x[ok][-1], y[ok][-1]))
    positive = bool(ys) and all((y > 0).all() for y in ys)
    for key, cs in sorted(groups.items(), key=lambda kv: tuple(_key(v) for v in kv[0])):
        xm, ym = median_curve(cs)
        ok = np.isfinite(ym)
        r = first_of_group[key]
        ax.plot(
            xm[ok],
            ym[ok],
            color=layout.colour_of(r),
            ls=layout.style_of(r),
            lw=2.0,
            zorder=3,
            **(marker if (markers and ok.sum() <= MARKERS_UP_TO) or ok.sum() == 1 else {}),
        )
    if xlog:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    if ys:
        if positive:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        else:
            allv = np.abs(np.concatenate(ys))
            allv = allv[allv > 0]
            linthresh = float(np.percentile(allv, 10)) if len(allv) else 1.0
            ax.set_yscale("symlog", linthresh=linthresh)
            ylabel += f"\n(symlog: linear for |y| < {linthresh:.3g})"  # values of both signs
        lim = _robust_limits(ys, positive)
        if lim is not None:
            ax.set_ylim(*lim)
            for x, y in marks:
                ax.plot(
                    x, min(max(y, lim[0]), lim[1]), marker="x", color="crimson", ms=7, mew=2, zorder=4, clip_on=False
                )
    else:
        no_data(ax, empty_reason)
    if title is not None:
        ax.set_title(title, fontsize=11, loc="left", fontweight="bold")
        ax.set_title(_panel_note(runs, drawn), fontsize=7.5, color="0.35", loc="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def plain_log_ticks(axis: Any) -> None:
    """Log-axis labels as plain numbers ("0.3", "2", "1000") instead of 3x10^-1."""
    from matplotlib.ticker import LogFormatter

    class _Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    axis.set_major_formatter(_Plain(labelOnlyBase=False))
    axis.set_minor_formatter(_Plain(labelOnlyBase=False, minor_thresholds=(1.0, 0.4)))


def finish(fig: Any, path: Path, title: str, handles: list) -> None:
    fig.suptitle(title, fontsize=13)
    # As many columns as the longest label allows at 8.5 pt (~0.085 in per character + the line).
    widest = max((len(h.get_label()) for h in handles), default=1)
    ncol = max(1, min(len(handles), int(fig.get_figwidth() / (0.6 + 0.085 * widest))))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=ncol,
        fontsize=8.5,
        frameon=False,
        columnspacing=1.4,
        handlelength=2.4,
    )
    fig.savefig(path, dpi=110)


def why_empty(
    runs: list[Run],
    curves: dict[str, Any],
    table: Path | None,
    kind: str,
    run_reasons: dict[str, list[str]] | None = None,
) -> str:
    """Why a panel has nothing to draw, from the tables: no runs, no records, or the records' reasons."""
    if not runs:
        return "no runs in this panel"
    if table is None or not Path(table).exists() or not any(r.run_id in curves for r in runs):
        started = sum(r.row.get("has_dir") is True for r in runs)
        if not started:
            return f"no run has started ({', '.join(sorted({r.status for r in runs}))})"
        return f"no {kind} records in these runs (monitor off, or the runs ended before its first one)"
    said = sorted({why for r in runs for why in (run_reasons or {}).get(r.run_id, [])})
    return "; ".join(said[:2]) if said else "every value is null or not finite"


def curve_figure(
    path: Path,
    title: str,
    layout: Layout,
    rows: list[tuple[str, str, dict, str]],
    table: Path | None,
    kind: str,
    xlabel: str,
    xlog: bool,
    markers: bool,
    run_reasons: dict[str, list[str]] | None = None,
    error_bars: dict[str, ErrorBar] | None = None,
) -> None:
    """One row per metric, one column per panel (or a panel grid when there is one metric);
    `error_bars`: metric -> the logged error bar drawn on each of its points (its columns in `series`)."""
    from matplotlib.lines import Line2D

    facets = layout.facets()
    own_colours = layout.colours_per_panel()
    if len(rows) == 1:
        nr, nc = grid(len(facets))
        fig, axes = new_figure(nr, nc, 5.6, 4.0)
        panels = [(axes.flat[i], f, rows[0]) for i, f in enumerate(facets)]
        for ax in list(axes.flat)[len(facets) :]:
            ax.set_visible(False)
    elif len(facets) <= WIDE_UP_TO:
        fig, axes = new_figure(len(rows), max(1, len(facets)), 4.4, 3.1)
        panels = [(axes[j, i], f, row) for j, row in enumerate(rows) for i, f in enumerate(facets)]
    else:  # many panels (a third axis, or compared sweeps): a row per panel, a column per metric
        fig, axes = new_figure(len(facets), len(rows), 4.4, 3.1)
        panels = [(axes[i, j], f, row) for j, row in enumerate(rows) for i, f in enumerate(facets)]
    for k, (ax, (variant, fixed), (metric, label, series, xcol)) in enumerate(panels):
        curves = {rid: (d[xcol], d[metric]) for rid, d in series.items() if metric in d}
        bar = (error_bars or {}).get(metric)
        bars = {
            rid: bar.bounds(d[metric], d)
            for rid, d in series.items()
            if bar and metric in d and all(c in d for c in bar.columns)
        }
        runs = layout.runs_of(variant, fixed)
        # Several metrics: the panel's name and run counts head the first metric's plot only.
        head = len(rows) == 1 or k < len(facets)
        draw_panel(
            ax,
            runs,
            curves,
            layout,
            xlog,
            Layout.title(variant, fixed) if head else None,
            xlabel,
            label,
            why_empty(runs, curves, table, kind, run_reasons),
            markers,
            bars,
        )
        if own_colours and head and runs:
            ax.legend(handles=layout.colour_handles(runs), fontsize=7.5, loc="best", framealpha=0.7)
    handles = layout.legend_handles(colours=not own_colours)
    handles += [
        Line2D([], [], color="0.4", marker="|", ls="none", ms=11, label=f"{METRIC_NAMES.get(m, m)}: {b.meaning}")
        for m, b in (error_bars or {}).items()
    ]
    finish(fig, path, title, handles)


def variants_figure(
    path: Path,
    title: str,
    layout: Layout,
    centers: np.ndarray,
    means: dict[str, np.ndarray],
    by: str | None = None,
) -> None:
    """The median training curve of each variant (its completed runs) on one log-log axis; `by`: an
    axis whose every value gets its own curve, in its own line style (the sweep, when comparing)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, 9.0, 5.0)
    ax = axes[0, 0]
    cmap = colormaps["tab10"]
    handles = []
    split = layout.values(by)
    for i, variant in enumerate(layout.variants):
        for j, value in enumerate(split):
            curves = [
                (centers, means[r.run_id])
                for r in layout.runs
                if r.variant == variant
                and r.status == "completed"
                and r.run_id in means
                and (by is None or r.params.get(by) == value)
            ]
            if not curves:
                continue
            x, y = median_curve(curves)
            ok = np.isfinite(y) & (x > 0) & (y > 0)
            style: dict[str, Any] = dict(color=cmap(i % 10), ls=_LINESTYLES[j % len(_LINESTYLES)], lw=2.2)
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 3 else None, **style)
            name = variant if by is None else f"{variant}, {by} {fmt(value)}"
            handles.append(Line2D([], [], label=f"{name} (median of {len(curves)} runs)", **style))
    if handles:
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
    else:
        no_data(ax, "no completed run has training records")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats)")
    ax.grid(True, which="major", alpha=0.3)
    finish(fig, path, title, handles)


# --------------------------------------------------------------------------- heat maps


@dataclass
class Cell:
    runs: list[Run]
    values: list[float]  # of completed runs
    reasons: list[str] = field(default_factory=list)  # why completed runs have no value
    flagged: int = 0  # completed runs whose value a flag marks: left out of `values`

    @property
    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    @property
    def quartiles(self) -> tuple[float, float] | None:
        """The spread over seeds (25th, 75th percentile), shown with the median."""
        if len(self.values) < 2:
            return None
        q25, q75 = np.percentile(self.values, [25, 75])
        return float(q25), float(q75)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    def why_empty(self) -> str:
        """Why a cell has no value: its runs by status, and for completed runs the commonest reason."""
        if not self.runs:
            return "not in grid"
        counts: dict[str, int] = defaultdict(int)
        for r in self.runs:
            counts[r.status] += 1
        lines = [
            f"{n} {s}" + (", no value" if s == "completed" else "")
            for s, n in sorted(counts.items(), key=lambda kv: -kv[1])
        ]
        if self.reasons:
            lines.append(textwrap.shorten(max(set(self.reasons), key=self.reasons.count), 60))
        return "\n".join(lines)


@dataclass
class HeatGrid:
    title: str
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]


def heat_grids(
    layout: Layout,
    row_axis: str | None,
    col_axis: str | None,
    value: Callable[[Run], float | None],
    reason: Callable[[Run], str | None] = lambda run: None,
    flagged: Callable[[Run], bool] = lambda run: False,
) -> list[HeatGrid]:
    """One grid per panel: `value(run)` of the completed runs, by (row value, column value);
    `reason(run)` says why a completed run has no value; a `flagged(run)` value is left out and counted."""
    out = []
    others = [
        a for a in (layout.colour_axis, layout.style_axis, *layout.facet_axes) if a and a not in (row_axis, col_axis)
    ]
    facet_layout = Layout(layout.runs, layout.variants, None, None, others)
    for variant, fixed in facet_layout.facets():
        runs = layout.runs_of(variant, fixed)
        rows = sorted({r.params.get(row_axis) if row_axis else None for r in runs}, key=_key)
        cols = sorted({r.params.get(col_axis) if col_axis else None for r in runs}, key=_key)
        cells = {}
        for rv in rows:
            for cv in cols:
                members = [
                    r
                    for r in runs
                    if (row_axis is None or r.params.get(row_axis) == rv)
                    and (col_axis is None or r.params.get(col_axis) == cv)
                ]
                done = [r for r in members if r.status == "completed"]
                kept = [r for r in done if not flagged(r)]
                vals = [v for r in kept if is_finite(v := value(r))]
                missing = [r for r in kept if not is_finite(value(r))]
                reasons = [why for r in missing if (why := reason(r))]
                cells[(rv, cv)] = Cell(members, vals, reasons, len(done) - len(kept))
        out.append(HeatGrid(Layout.title(variant, fixed), rows, cols, cells))
    return out


def heatmap_figure(
    path: Path,
    title: str,
    grids: list[HeatGrid],
    row_axis: str | None,
    col_axis: str | None,
    label: str,
    fmt_value: str = "{:.3f}",
    cmap_name: str = "viridis_r",
) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    vals = [c.median for g in grids for c in g.cells.values() if c.median is not None]
    lo, hi = robust_range(vals)
    norm, cmap = Normalize(lo, hi, clip=True), colormaps[cmap_name]
    n = max(1, len(grids))
    ncols = min(n, 4)
    fig, axes = new_figure(math.ceil(n / ncols), ncols, 4.0, 3.6)
    for ax, g in zip(axes.flat, grids):
        ax.set_title(g.title, fontsize=11)
        if not g.cells:
            no_data(ax, "no runs")
            continue
        data = np.full((len(g.rows), len(g.cols)), np.nan)
        for a, rv in enumerate(g.rows):
            for b, cv in enumerate(g.cols):
                c = g.cells[(rv, cv)]
                if c.median is not None:
                    data[a, b] = c.median
        ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        for a, rv in enumerate(g.rows):
            for b, cv in enumerate(g.cols):
                c = g.cells[(rv, cv)]
                if c.median is None:
                    ax.add_patch(
                        Rectangle(
                            (b - 0.5, a - 0.5), 1, 1, facecolor="0.92", edgecolor="0.6", hatch="///", lw=0.0, zorder=0.5
                        )
                    )
                    ax.text(b, a, c.why_empty(), ha="center", va="center", fontsize=7.5, color="0.15")
                    continue
                rgba = cmap(norm(c.median))
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                txt = fmt_value.format(c.median)
                if c.quartiles:
                    txt += "\n[" + ", ".join(fmt_value.format(q) for q in c.quartiles) + "]"
                txt += f"\n{len(c.values)}/{len(c.runs)} completed"
                others = sorted({r.status for r in c.runs} - {"completed"})
                if others:
                    txt += "\n" + ", ".join(f"{c.count(s)} {s}" for s in others)
                if c.flagged:
                    txt += f"\n{c.flagged} flagged, left out"
                ax.text(b, a, txt, ha="center", va="center", fontsize=8, color="black" if lum > 0.5 else "white")
        ax.set_xticks(range(len(g.cols)) if col_axis else [], [fmt(v) for v in g.cols] if col_axis else [])
        ax.set_yticks(range(len(g.rows)) if row_axis else [], [fmt(v) for v in g.rows] if row_axis else [])
        ax.set_xlabel(col_axis or "")
        ax.set_ylabel(row_axis or "")
    for ax in list(axes.flat)[len(grids) :]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8, label=label, extend="both")
    fig.suptitle(
        title + "\n(median over seeds [quartiles]; hatched: no value in that cell, the text says why;"
        " colours clipped to the bulk of the cells, so one outlier cannot flatten the rest)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
