"""The figures of `analyze`: fitted curves over the data, fit quality, alpha against the rest.

Panels follow the sweep's axes as the report's do (deconcnn.analysis.plots.Layout): a cell is a
variant and a value of every non-seed axis, its runs are the seeds.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deconcnn.analysis.columns import value_flags
from deconcnn.analysis.curves import TIME_AXIS_LABELS, curve_problem, log_bins, time_axis
from deconcnn.analysis.fits import MODELS
from deconcnn.analysis.per_run import EARLY_EPOCHS, predict
from deconcnn.analysis.plots import (
    Layout,
    Run,
    finish,
    fmt,
    heat_grids,
    heatmap_figure,
    new_figure,
    no_data,
    plain_log_ticks,
    robust_range,
)
from deconcnn.analysis.sources import SweepSource
from deconcnn.runlog.schema import is_finite

ANALYSIS_PLOTS = {
    "fits_mosaic.png": "Loss curves with their selected fits (log-log), one panel per cell",
    "model_evidence.png": "Which model describes each run: AICc of the power law minus the best other model",
    "alpha_vs_final_loss.png": "alpha (95% interval) against the final training loss",
    "heatmap_alpha_early.png": f"alpha_early (epochs {EARLY_EPOCHS[0]:g}-{EARLY_EPOCHS[1]:g}), median over seeds",
    "window_scan.png": "Window robustness: median alpha over (start, end) epochs, one panel per cell",
    "knee_vs_plateau.png": "Knee epoch against the lambda_max plateau epoch (95% intervals)",
}
MOSAIC_MAX_PANELS = 48
ALPHAS = ("alpha_early", "alpha_full")
VARIANT_COLOURS = "tab10"


def _runs(source: SweepSource, run_rows: list[dict[str, Any]]) -> tuple[list[Run], Layout]:
    runs = [
        Run(r["run_id"], r["variant"] or "(no variant)", {a: r.get(a) for a in source.axes}, r["status"], r)
        for r in run_rows
    ]
    return runs, Layout.of(runs, source.variants or ["(no runs)"], source.axes)


def _variant_colour(layout: Layout) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps[VARIANT_COLOURS]
    return {v: cmap(i % 10) for i, v in enumerate(layout.variants)}


def mosaic(path: Path, layout: Layout, fit_rows: list[dict[str, Any]], curves: dict[str, Any]) -> None:
    cells = Layout(
        layout.runs,
        layout.variants,
        None,
        None,
        [a for a in (layout.colour_axis, layout.style_axis, *layout.facet_axes) if a],
    ).facets()
    shown = cells[:MOSAIC_MAX_PANELS]
    ncols = min(6, max(1, len(shown)))
    fig, axes = new_figure(math.ceil(max(1, len(shown)) / ncols), ncols, 2.8, 2.3)
    selected = {r["run_id"]: r for r in fit_rows if r.get("selected")}
    for ax, (variant, fixed) in zip(axes.flat, shown):
        runs = layout.runs_of(variant, fixed)
        ax.set_title(Layout.title(variant, fixed), fontsize=8)
        drawn = 0
        for i, run in enumerate(runs):
            data = curves.get(run.run_id)
            if data is None or len(data.steps) < 2:
                continue
            # the axis the fits ran on (their positions are x - 1 on it)
            x, kind, _ = time_axis(data.steps, data.lr)
            on_axis = x > 0
            if curve_problem(x[on_axis], data.losses[on_axis]):
                continue  # its row says why (reason, curve_flag); a log axis cannot show it
            binned = log_bins(x[on_axis], data.losses[on_axis], 10)
            colour = f"C{i % 10}"
            ax.plot(binned.t, binned.y, "o", ms=1.8, color=colour, alpha=0.6)
            fit = selected.get(run.run_id)
            if fit is not None:
                xs = np.geomspace(fit["step_start"] + 1, fit["step_end"] + 1, 60)
                ax.plot(
                    xs,
                    predict(fit, xs - 1),
                    color=colour,
                    lw=1.3,
                    ls={"power_law": "-", "exponential": "--"}.get(fit["model"], ":"),
                )
            drawn += 1
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
            ax.set_xlabel(TIME_AXIS_LABELS[kind], fontsize=7)
            ax.set_ylabel("training loss (nats)", fontsize=7)
        else:
            no_data(ax, "no run with a positive, finite loss curve")
        if drawn < len(runs):
            ax.text(
                0.02, 0.02, f"{len(runs) - drawn} of {len(runs)} runs not drawn", transform=ax.transAxes, fontsize=6
            )
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="none", color="0.4", ms=3, label="data (log bins, one colour per seed)"),
        Line2D([], [], color="0.2", ls="-", label="selected: power law"),
        Line2D([], [], color="0.2", ls="--", label="selected: exponential"),
        Line2D([], [], color="0.2", ls=":", label="selected: broken power law"),
    ]
    more = f" (first {MOSAIC_MAX_PANELS} of {len(cells)} cells)" if len(cells) > len(shown) else ""
    finish(fig, path, ANALYSIS_PLOTS["fits_mosaic.png"] + more, handles)


EVIDENCE_CLIP = 100.0


def model_evidence(path: Path, layout: Layout, fit_rows: list[dict[str, Any]]) -> None:
    """Per completed run, AICc(power law) - min AICc(exponential, broken power law) on its fit window:
    below -2 the power law is better supported, above +2 another model is (R^2 is ~0.95-1 for every
    model on these curves and cannot tell them apart). Symmetric-log axis, clipped at +/- 100."""
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 2, 5.4, 3.6)
    colours = _variant_colour(layout)
    done = {r.run_id: r.variant for r in layout.runs if r.status == "completed"}
    aicc: dict[str, dict[str, float]] = {}
    for r in fit_rows:
        if r["run_id"] in done and r.get("ok") and is_finite(r.get("aicc")):
            aicc.setdefault(r["run_id"], {})[r["model"]] = float(r["aicc"])
    ax = axes[0, 0]
    bins = np.concatenate([-np.geomspace(EVIDENCE_CLIP, 0.5, 12), [0.0], np.geomspace(0.5, EVIDENCE_CLIP, 12)])
    n = 0
    for variant in layout.variants:
        d = [
            a[MODELS[0]] - min(a[m] for m in MODELS[1:] if m in a)
            for rid, a in aicc.items()
            if done[rid] == variant and MODELS[0] in a and any(m in a for m in MODELS[1:])
        ]
        if d:
            n += len(d)
            ax.hist(
                np.clip(d, -EVIDENCE_CLIP, EVIDENCE_CLIP), bins=bins, histtype="step", lw=1.5, color=colours[variant]
            )
    if n:
        ax.set_xscale("symlog", linthresh=1.0)
        for x in (-2, 2):
            ax.axvline(x, color="0.5", ls="--", lw=1)
        ax.set_xlabel("AICc(power law) - AICc(best other) (AICc units)")
        ax.set_ylabel("runs")
        ax.set_title("< -2: power law better supported; > +2: another model", fontsize=8)
    else:
        no_data(ax, "no completed run with the fits")
    ax = axes[0, 1]
    chosen = {m: [0] * len(layout.variants) for m in MODELS}
    for r in fit_rows:
        if r["run_id"] in done and r.get("selected"):
            chosen[r["model"]][layout.variants.index(done[r["run_id"]])] += 1
    bottom = np.zeros(len(layout.variants))
    for i, m in enumerate(MODELS):
        ax.bar(range(len(layout.variants)), chosen[m], bottom=bottom, color=f"C{i}", label=m)
        bottom += chosen[m]
    ax.set_xticks(range(len(layout.variants)), layout.variants, fontsize=8)
    ax.set_ylabel("completed runs")
    ax.set_title("model selected (AICc, parsimony within 2)", fontsize=8)
    ax.legend(fontsize=7)
    handles = [Line2D([], [], color=c, label=v) for v, c in colours.items()]
    finish(fig, path, ANALYSIS_PLOTS["model_evidence.png"], handles)


def alpha_vs_final(path: Path, layout: Layout) -> None:
    """Each completed run's alpha with its 95% interval against its final loss; a flagged value is
    drawn hollow (it is left out of every median)."""
    fig, axes = new_figure(1, 2, 4.8, 3.8)
    colours = _variant_colour(layout)
    from matplotlib.lines import Line2D

    for ax, key in zip(axes.flat, ALPHAS):
        n = flagged = 0
        for run in layout.runs:
            x, y = run.row.get("final_loss_nats"), run.row.get(key)
            if run.status != "completed" or not (is_finite(x) and is_finite(y)):
                continue
            lo, hi = run.row.get(f"{key}_lo"), run.row.get(f"{key}_hi")
            err = [[max(0.0, y - lo)], [max(0.0, hi - y)]] if is_finite(lo) and is_finite(hi) else None
            bad = bool(value_flags(run.row, key))
            flagged += bad
            colour = colours[run.variant]
            ax.errorbar(
                x, y, yerr=err, fmt="o", ms=4, color=colour, mfc="none" if bad else colour, elinewidth=0.8, alpha=0.8
            )
            n += 1
        if not n:
            no_data(ax, f"no completed run with {key}")
        ax.set_xlabel("final training loss (nats)")
        ax.set_ylabel(f"{key} (exponent, dimensionless)")
        ax.set_title(f"{n} runs, {flagged} flagged (hollow)", fontsize=8)
        ax.grid(alpha=0.3)
        lims = robust_range([r.row[key] for r in layout.runs if r.status == "completed" and is_finite(r.row.get(key))])
        pad = 0.15 * (lims[1] - lims[0])
        ax.set_ylim(lims[0] - pad, lims[1] + pad)
    handles = [Line2D([], [], marker="o", ls="none", color=c, label=v) for v, c in colours.items()]
    handles.append(Line2D([], [], marker="o", ls="none", color="0.3", mfc="none", label="flagged"))
    finish(fig, path, ANALYSIS_PLOTS["alpha_vs_final_loss.png"], handles)


def window_scan_figure(
    path: Path, layout: Layout, window_rows: list[dict[str, Any]], group_keys: Sequence[str]
) -> None:
    """One panel per cell (variant x the non-seed axes): median alpha over its seeds for each window;
    a window that not every seed reaches shows its n."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    starts = sorted({r["start_epoch"] for r in window_rows})
    ends = sorted({r["end_epoch"] for r in window_rows})
    cells = list(dict.fromkeys(tuple(r.get(k) for k in group_keys) for r in window_rows))[:MOSAIC_MAX_PANELS]
    norm = Normalize(*robust_range([r["alpha_median"] for r in window_rows]), clip=True)
    cmap = colormaps["magma"]
    ncols = min(6, max(1, len(cells)))
    fig, axes = new_figure(math.ceil(max(1, len(cells)) / ncols), ncols, 2.6, 2.3)
    for ax, cell in zip(axes.flat, cells):
        grid = np.full((len(starts), len(ends)), np.nan)
        short = []
        for r in window_rows:
            if tuple(r.get(k) for k in group_keys) == cell:
                a, b = starts.index(r["start_epoch"]), ends.index(r["end_epoch"])
                grid[a, b] = r["alpha_median"]
                if r["n"] < r["n_runs"]:
                    short.append((a, b, f"n={r['n']}/{r['n_runs']}"))
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        for a, b, text in short:
            ax.text(b, a, text, ha="center", va="center", fontsize=5, color="cyan")
        ax.set_title(", ".join(fmt(v) for v in cell), fontsize=7)
        ax.set_xticks(range(len(ends)), [fmt(e) for e in ends], fontsize=6)
        ax.set_yticks(range(len(starts)), [fmt(s) for s in starts], fontsize=6)
        ax.set_xlabel("window end (epoch)", fontsize=7)
        ax.set_ylabel("window start (epoch)", fontsize=7)
    if not cells:
        no_data(axes[0, 0], "no completed, unflagged run long enough for any window")
    for ax in list(axes.flat)[max(1, len(cells)) :]:
        ax.set_visible(False)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8, label="median alpha", extend="both"
    )
    fig.suptitle(
        ANALYSIS_PLOTS["window_scan.png"] + f" ({', '.join(group_keys)}; never pooled over cells)", fontsize=11
    )
    fig.savefig(path, dpi=100)


def knee_vs_plateau(path: Path, layout: Layout) -> None:
    """Knee against plateau with both intervals; completed runs with a knee but no plateau are drawn
    in a strip on the right, one column per lambda_max shape (rising, tracks 2/lr, ...)."""
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, 7.5, 4.8)
    ax = axes[0, 0]
    colours = _variant_colour(layout)
    done = [r for r in layout.runs if r.status == "completed" and is_finite(r.row.get("knee_epoch"))]
    with_plateau = [r for r in done if is_finite(r.row.get("lambda_max_plateau_epoch"))]
    without = [r for r in done if r not in with_plateau]

    def err(row: dict[str, Any], key: str) -> list[list[float]] | None:
        v, lo, hi = row[key], row.get(f"{key}_lo"), row.get(f"{key}_hi")
        # a bootstrap interval need not contain its point estimate: draw it from the point outwards
        return [[max(0.0, v - lo)], [max(0.0, hi - v)]] if is_finite(lo) and is_finite(hi) else None

    for r in with_plateau:
        x, y = r.row["lambda_max_plateau_epoch"], r.row["knee_epoch"]
        ax.errorbar(
            x,
            y,
            xerr=err(r.row, "lambda_max_plateau_epoch"),
            yerr=err(r.row, "knee_epoch"),
            fmt="o",
            ms=4,
            color=colours[r.variant],
            elinewidth=0.7,
            alpha=0.8,
        )
    top = max([1.0, *(r.row["lambda_max_plateau_epoch"] for r in with_plateau), *(r.row["knee_epoch"] for r in done)])
    top *= 1.05
    ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--")

    def shape_of(r: Run) -> str:
        return str(r.row.get("lambda_max_shape") or "not described")

    shapes = sorted({shape_of(r) for r in without})
    step = 0.25 * top  # the strip: one column per shape, right of the plot
    ticks, labels = [], []
    for i, shape in enumerate(shapes):
        x = top * 1.1 + step * (i + 0.5)
        members = [r for r in without if shape_of(r) == shape]
        jitter = np.linspace(-0.3, 0.3, len(members)) * step
        for r, j in zip(members, jitter):
            ax.plot(x + j, r.row["knee_epoch"], "x", ms=5, color=colours[r.variant])
        ticks.append(x)
        labels.append(textwrap.fill(f"{shape} ({len(members)})", 14))
    if shapes:
        ax.axvline(top * 1.05, color="0.3", lw=0.8)
        ax.text(top * 1.1, top * 0.97, "no plateau:", fontsize=8, va="top")
    ax.set_xlim(0, top * 1.1 + step * len(shapes) if shapes else top)
    ax.set_ylim(0, top)
    if not done:
        no_data(ax, "no completed run with a knee")
    ax.set_xlabel("lambda_max plateau (epoch)")
    ax.set_ylabel("knee (epoch)")
    if ticks:
        base = [t for t in ax.get_xticks() if 0 <= t <= top * 0.9]
        ax.set_xticks([*base, *ticks], [fmt(t) for t in base] + labels, fontsize=7)
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="none", color=c, label=v) for v, c in colours.items()]
    handles.append(Line2D([], [], color="0.6", ls="--", label="knee = plateau"))
    handles.append(Line2D([], [], marker="x", ls="none", color="0.3", label="no plateau (by shape)"))
    finish(fig, path, ANALYSIS_PLOTS["knee_vs_plateau.png"], handles)


def write_plots(
    out_dir: Path,
    source: SweepSource,
    run_rows: list[dict[str, Any]],
    fit_rows: list[dict[str, Any]],
    curves: dict[str, Any],
    window_rows: Sequence[dict[str, Any]],
    group_keys: Sequence[str],
) -> tuple[list[Path], dict[str, str]]:
    """Every plot of ANALYSIS_PLOTS; returns the paths and, per plot that failed, the error. A failed
    plot never stops the tables, the other plots or the report: its file is a figure with the error."""
    _, layout = _runs(source, run_rows)

    def heatmap(path: Path) -> None:
        grids = heat_grids(
            layout,
            layout.colour_axis,
            layout.style_axis,
            lambda r: r.row.get("alpha_early"),
            lambda r: r.row.get("alpha_early_reason"),
            lambda r: bool(value_flags(r.row, "alpha_early")),
        )
        heatmap_figure(
            path,
            ANALYSIS_PLOTS["heatmap_alpha_early.png"],
            grids,
            layout.colour_axis,
            layout.style_axis,
            "median alpha_early (exponent, dimensionless)",
            "{:.3f}",
            "viridis",
        )

    draw = {
        "fits_mosaic.png": lambda p: mosaic(p, layout, fit_rows, curves),
        "model_evidence.png": lambda p: model_evidence(p, layout, fit_rows),
        "alpha_vs_final_loss.png": lambda p: alpha_vs_final(p, layout),
        "heatmap_alpha_early.png": heatmap,
        "window_scan.png": lambda p: window_scan_figure(p, layout, list(window_rows), group_keys),
        "knee_vs_plateau.png": lambda p: knee_vs_plateau(p, layout),
    }
    errors: dict[str, str] = {}
    for name, plot in draw.items():
        try:
            plot(out_dir / name)
        except Exception as err:  # noqa: BLE001 - one broken figure must not cost the report
            errors[name] = f"{type(err).__name__}: {err}"
            fig, axes = new_figure(1, 1, 6, 2.5)
            no_data(axes[0, 0], f"{name} failed: {errors[name]}")
            fig.savefig(out_dir / name, dpi=80)
    return [out_dir / name for name in ANALYSIS_PLOTS], errors
