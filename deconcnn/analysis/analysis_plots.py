"""The figures of `analyze`: fitted curves over the data, fit quality, alpha against the rest.

Panels follow the sweep's axes as the report's do (deconcnn.analysis.plots.Layout): a cell is a
variant and a value of every non-seed axis, its runs are the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deconcnn.analysis.curves import log_bins
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
)
from deconcnn.analysis.sources import SweepSource
from deconcnn.runlog.schema import is_finite

ANALYSIS_PLOTS = {
    "fits_mosaic.png": "Loss curves with their selected fits (log-log), one panel per cell",
    "r2_hist.png": "R^2 of every fit, by model",
    "alpha_vs_final_loss.png": "alpha against the final training loss",
    "heatmap_alpha_early.png": f"alpha_early (epochs {EARLY_EPOCHS[0]:g}-{EARLY_EPOCHS[1]:g}), median over seeds",
    "window_scan.png": "Window robustness: median alpha over (start, end) epochs",
    "knee_vs_plateau.png": "Knee epoch against the lambda_max plateau epoch",
}
MOSAIC_MAX_PANELS = 48
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
            binned = log_bins(data.steps + 1, data.losses, 10)
            colour = f"C{i % 10}"
            ax.plot(binned.t - 1, binned.y, "o", ms=1.8, color=colour, alpha=0.6)
            fit = selected.get(run.run_id)
            if fit is not None:
                steps = np.geomspace(max(fit["step_start"], 1), fit["step_end"], 60)
                ax.plot(
                    steps,
                    predict(fit, steps),
                    color=colour,
                    lw=1.3,
                    ls={"power_law": "-", "exponential": "--"}.get(fit["model"], ":"),
                )
            drawn += 1
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        else:
            no_data(ax, "no run with training records")
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


def r2_histogram(path: Path, fit_rows: list[dict[str, Any]]) -> None:
    fig, axes = new_figure(1, len(MODELS), 3.6, 3.0)
    for ax, model in zip(axes.flat, MODELS):
        r2 = np.array([r["r2"] for r in fit_rows if r["model"] == model and r.get("ok") and is_finite(r["r2"])])
        if len(r2):
            ax.hist(np.clip(r2, -1, 1), bins=np.linspace(min(0.0, r2.min()), 1, 30), color="0.4")
            ax.axvline(np.median(r2), color="crimson", lw=1.5)
            ax.set_xlabel("R^2 (weighted)")
        else:
            no_data(ax, "no successful fit")
        ax.set_title(f"{model} ({len(r2)} fits; median red)", fontsize=9)
    fig.suptitle(ANALYSIS_PLOTS["r2_hist.png"], fontsize=12)
    fig.savefig(path, dpi=100)


def alpha_vs_final(path: Path, layout: Layout) -> None:
    fig, axes = new_figure(1, 2, 4.8, 3.8)
    colours = _variant_colour(layout)
    from matplotlib.lines import Line2D

    for ax, key in zip(axes.flat, ("alpha_early", "alpha_full")):
        n = 0
        for run in layout.runs:
            x, y = run.row.get("final_loss_nats"), run.row.get(key)
            if run.status == "completed" and is_finite(x) and is_finite(y):
                ax.plot(x, y, "o", ms=4, color=colours[run.variant], alpha=0.8)
                n += 1
        if not n:
            no_data(ax, f"no completed run with {key}")
        ax.set_xlabel("final training loss (nats)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="none", color=c, label=v) for v, c in colours.items()]
    finish(fig, path, ANALYSIS_PLOTS["alpha_vs_final_loss.png"], handles)


def window_scan_figure(path: Path, layout: Layout, window_rows: list[dict[str, Any]]) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    starts = sorted({r["start_epoch"] for r in window_rows})
    ends = sorted({r["end_epoch"] for r in window_rows})
    values = [r["alpha_median"] for r in window_rows if is_finite(r["alpha_median"])]
    norm = Normalize(*(min(values), max(values)) if values else (0, 1))
    cmap = colormaps["magma"]
    fig, axes = new_figure(1, max(1, len(layout.variants)), 3.6, 3.4)
    for ax, variant in zip(axes.flat, layout.variants):
        grid = np.full((len(starts), len(ends)), np.nan)
        for r in window_rows:
            if r["variant"] == variant:
                grid[starts.index(r["start_epoch"]), ends.index(r["end_epoch"])] = r["alpha_median"]
        ax.set_title(variant, fontsize=10)
        if not np.isfinite(grid).any():
            no_data(ax, "no completed run long enough for any window")
            continue
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        for a in range(len(starts)):
            for b in range(len(ends)):
                if np.isfinite(grid[a, b]):
                    ax.text(
                        b,
                        a,
                        f"{grid[a, b]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if norm(grid[a, b]) < 0.5 else "black",
                    )
        ax.set_xticks(range(len(ends)), [fmt(e) for e in ends])
        ax.set_yticks(range(len(starts)), [fmt(s) for s in starts])
        ax.set_xlabel("window end (epoch)")
        ax.set_ylabel("window start (epoch)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8, label="median alpha")
    fig.suptitle(ANALYSIS_PLOTS["window_scan.png"], fontsize=12)
    fig.savefig(path, dpi=100)


def knee_vs_plateau(path: Path, layout: Layout) -> None:
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, 6.5, 4.5)
    ax = axes[0, 0]
    colours = _variant_colour(layout)
    points = [
        (r.row["lambda_max_plateau_epoch"], r.row["knee_epoch"], r.variant)
        for r in layout.runs
        if r.status == "completed"
        and is_finite(r.row.get("lambda_max_plateau_epoch"))
        and is_finite(r.row.get("knee_epoch"))
    ]
    for x, y, variant in points:
        ax.plot(x, y, "o", ms=5, color=colours[variant], alpha=0.8)
    if points:
        top = max(max(p[0] for p in points), max(p[1] for p in points)) * 1.05
        ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--")
    else:
        done = [r for r in layout.runs if r.status == "completed"]
        counts = {
            key: sum(is_finite(r.row.get(key)) for r in done) for key in ("knee_epoch", "lambda_max_plateau_epoch")
        }
        reasons = [r.row.get("lambda_max_plateau_reason") for r in done if r.row.get("lambda_max_plateau_reason")]
        commonest = f"\nplateau: {max(set(reasons), key=reasons.count)}" if reasons else ""
        no_data(
            ax,
            f"no completed run has both a knee and a lambda_max plateau\n(of {len(done)} completed: "
            f"{counts['knee_epoch']} with a knee, {counts['lambda_max_plateau_epoch']} with a plateau){commonest}",
        )
    ax.set_xlabel("lambda_max plateau (epoch)")
    ax.set_ylabel("knee (epoch)")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="none", color=c, label=v) for v, c in colours.items()]
    handles.append(Line2D([], [], color="0.6", ls="--", label="knee = plateau"))
    finish(fig, path, ANALYSIS_PLOTS["knee_vs_plateau.png"], handles)


def write_plots(
    out_dir: Path,
    source: SweepSource,
    run_rows: list[dict[str, Any]],
    fit_rows: list[dict[str, Any]],
    curves: dict[str, Any],
    window_rows: Sequence[dict[str, Any]],
) -> list[Path]:
    _, layout = _runs(source, run_rows)
    mosaic(out_dir / "fits_mosaic.png", layout, fit_rows, curves)
    r2_histogram(out_dir / "r2_hist.png", fit_rows)
    alpha_vs_final(out_dir / "alpha_vs_final_loss.png", layout)
    grids = heat_grids(
        layout,
        layout.colour_axis,
        layout.style_axis,
        lambda r: r.row.get("alpha_early"),
        lambda r: r.row.get("alpha_early_reason"),
    )
    heatmap_figure(
        out_dir / "heatmap_alpha_early.png",
        ANALYSIS_PLOTS["heatmap_alpha_early.png"],
        grids,
        layout.colour_axis,
        layout.style_axis,
        "median alpha_early",
        "{:.3f}",
        "viridis",
    )
    window_scan_figure(out_dir / "window_scan.png", layout, list(window_rows))
    knee_vs_plateau(out_dir / "knee_vs_plateau.png", layout)
    return [out_dir / name for name in ANALYSIS_PLOTS]
