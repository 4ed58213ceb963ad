"""Plots and an index page for a sweep, from ``collect``'s tables (collected incrementally first).

    report_dir = report("results/loss_lin_slope")   # -> <sweep>/report/{*.png,index.md,index.html}

Plots (panels, colours and line styles follow the sweep's axes: deconcnn.analysis.plots.Layout):

- ``train_loss.png``: training loss (nats) vs step, log-log. Each run's per-batch loss is averaged
  in log-spaced step bins (thin line; step 0 falls in the first bin, drawn at step 1); the bold
  line is the median over the seeds of a group.
- ``variants.png``: the median training curve of each variant on one axis.
- ``val_loss.png``: validation loss (nats) vs epoch, same convention, log y.
- ``curvature.png``: lambda_max (row 1) and Hessian trace (row 2) vs step, each point of the trace
  with its logged error bar (plots.ERROR_BARS).
- ``noise.png``: psd_tail, resid_power, grad_var, noise_scale vs epoch.

Axes are labelled with each key's name and unit (plots.axis_label). Several sweeps
(``report([A, B])``) are drawn as one: their tables joined (deconcnn.analysis.compare), one line
style per sweep, into ``<first sweep's folder>/compare-<A>+<B>/report`` by default. Runs that
trained on generated data put a banner at the top of the index.
- ``heatmap_best_val.png``: per panel, a grid over two axes (default: the two non-seed axes with
  the most values) of the median over *completed* seeds of each run's best validation loss; each
  cell says n completed / n in the grid and how many diverged; cells with no completed run are
  hatched and say why.

Every run's status is the state its files record (deconcnn.runlog.states). Diverged runs are drawn to their
last finite value and marked with an x there. A sweep with missing, diverged or failed runs still
reports; the index lists them, with the reason. `analyze` adds its own section (analysis/).
"""

from __future__ import annotations

import datetime as _dt
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from deconcnn.analysis.collect import CollectResult, collect
from deconcnn.analysis.compare import CompareResult, collect_many
from deconcnn.analysis.plots import (
    LINESTYLE_NAMES,
    HeatGrid,
    Layout,
    Run,
    axis_label,
    curve_figure,
    error_bar,
    fmt,
    heat_grids,
    heatmap_figure,
    read_series,
    reasons,
    train_bins,
    variants_figure,
)
from deconcnn.analysis.sources import SWEEP_COLUMN, run_key
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import ANALYSIS_DIR, REPORT_DIR
from deconcnn.runlog.run_status import SYNTHETIC_DATA
from deconcnn.runlog.schema import CURVATURE_METRICS, NOISE_METRICS
from deconcnn.runlog.states import STATES

__all__ = ["INDEX_FILES", "PLOTS", "report"]

PLOTS = {
    "train_loss.png": "Training loss (nats) vs step",
    "variants.png": "Variants compared: median training loss (completed runs)",
    "val_loss.png": "Validation loss (nats) vs epoch",
    "curvature.png": "Curvature: top Hessian eigenvalue and Hessian trace vs step",
    "noise.png": "Noise metrics vs epoch",
    "heatmap_best_val.png": "Best validation loss, median over completed seeds",
}
INDEX_FILES = ("index.md", "index.html")
#: Written by `analyze` (analysis/) and linked from the index when present.
ANALYSIS_SECTION = "section.md"
_FIRST = ("completed", "running", "pending")  # the report lists these first, then the rest in STATES order
_STATUS_ORDER = (*_FIRST, *(s for s in STATES if s not in _FIRST))


class ReportError(SweepError):
    """A report option that does not fit the sweep."""


def heat_axes(layout: Layout, axes: Sequence[str], chosen: Sequence[str] | None) -> tuple[str | None, str | None]:
    """(row axis, column axis): the user's, or the two non-seed axes with the most values."""
    if chosen:
        unknown = [a for a in chosen if a not in axes]
        if unknown or len(chosen) != 2:
            raise ReportError(
                f"--heatmap takes two of the sweep's axes ({', '.join(axes) or 'none'}), got {','.join(chosen)}"
            )
        return chosen[0], chosen[1]
    return layout.colour_axis, layout.style_axis


def axes_title(row_axis: str | None, col_axis: str | None) -> str:
    """The heat map's axes in words: "optim.lr x optim.weight_decay", "by optim.lr", "all runs"."""
    named = [a for a in (row_axis, col_axis) if a]
    return " x ".join(named) if len(named) == 2 else f"by {named[0]}" if named else "all runs"


def load_runs(res: CollectResult) -> tuple[list[Run], list[str], list[str]]:
    """The runs (runs table rows), the variants in the sweep's order, the axes."""
    assert res.source is not None
    rows = pq.read_table(res.files["runs"]).to_pylist()
    axes = res.source.axes
    runs = [
        Run(
            run_key(r["run_id"], r.get(SWEEP_COLUMN)),
            r["variant"] or "(no variant)",
            {a: r.get(a) for a in axes},
            r["status"] or "unknown",
            r,
        )
        for r in rows
    ]
    variants = list(dict.fromkeys([*res.source.variants, *(r.variant for r in runs)]))
    return runs, variants or ["(no runs)"], axes


def report(
    sweep_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    collected: str | os.PathLike[str] | None = None,
    progress: bool = False,
    workers: int = 1,
    heatmap: Sequence[str] | None = None,
    result: CollectResult | None = None,
) -> Path:
    """Collect ``sweep_dir`` (incremental, parquet, into ``collected`` or ``<sweep>/collected``) and
    write the plots and ``index.md``/``index.html`` into ``out`` (default ``<sweep>/report``).
    Several sweep directories: one report over their joined tables (module doc). Returns the
    report directory. ``result``: that collect, already done (analyze passes its own: one collect
    per command)."""
    dirs = [sweep_dir] if isinstance(sweep_dir, (str, os.PathLike)) else list(sweep_dir)
    res: CollectResult
    if result is not None:
        res = result
    elif len(dirs) > 1:
        res = collect_many(dirs, out=collected, progress=progress, workers=workers)
    else:
        res = collect(dirs[0], fmt="parquet", out=collected, progress=progress, workers=workers)
    compared = isinstance(res, CompareResult)
    runs, variants, axes = load_runs(res)
    layout = Layout.of(runs, variants, axes, style=SWEEP_COLUMN if compared else None)
    row_axis, col_axis = heat_axes(layout, axes, heatmap)
    out_dir = Path(out) if out is not None else res.sweep_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    centers, means = train_bins(res.files.get("train"))
    curve_figure(
        out_dir / "train_loss.png",
        PLOTS["train_loss.png"] + " (runs: mean over log-spaced step bins)",
        layout,
        [
            (
                "loss_train_nats",
                axis_label("loss_train_nats"),
                {r: {"step": centers, "loss_train_nats": m} for r, m in means.items()},
                "step",
            )
        ],
        res.files.get("train"),
        "train",
        "step",
        True,
        markers=False,
    )
    variants_figure(
        out_dir / "variants.png", PLOTS["variants.png"], layout, centers, means, by=SWEEP_COLUMN if compared else None
    )
    # (plot, record kind, x column, x label, metrics); sparse series: markers on
    sparse = (
        ("val_loss.png", "val", "epoch_frac", "epoch", ["loss_val_nats"]),
        ("curvature.png", "curvature", "step", "step", list(CURVATURE_METRICS)),
        ("noise.png", "noise", "epoch_frac", "epoch", list(NOISE_METRICS)),
    )
    for plot, kind, xcol, xlabel, metrics in sparse:
        table = res.files.get(kind)
        bars = {m: b for m in metrics if (b := error_bar(table, m)) is not None}
        series = read_series(table, xcol, [*metrics, *(c for b in bars.values() for c in b.columns)])
        curve_figure(
            out_dir / plot,
            PLOTS[plot],
            layout,
            [(m, axis_label(m), series, xcol) for m in metrics],
            table,
            kind,
            xlabel,
            False,
            markers=True,
            run_reasons=reasons(table),  # why a record's value is null, where the kind says
            error_bars=bars,
        )
    grids = heat_grids(layout, row_axis, col_axis, lambda r: r.row.get("best_loss_val_nats"))
    heatmap_figure(
        out_dir / "heatmap_best_val.png",
        f"{PLOTS['heatmap_best_val.png']}, {axes_title(row_axis, col_axis)}",
        grids,
        row_axis,
        col_axis,
        f"median best {axis_label('loss_val_nats')}",
    )
    _write_index(out_dir, res, runs, variants, grids, row_axis, col_axis, layout)
    return out_dir


# --------------------------------------------------------------------------- index


def _run_lists(runs: list[Run]) -> list[tuple[str, list[tuple[str, str]]]]:
    def lst(pred: Callable[[Run], bool], detail: Callable[[Run], str]) -> list[tuple[str, str]]:
        return [(r.run_id, detail(r)) for r in runs if pred(r)]

    def reason(r: Run) -> str:
        return str(r.row.get("reason") or r.row.get("error") or "")

    return [
        ("Missing (never submitted)", lst(lambda r: r.status == "missing", reason)),
        (
            "Diverged",
            lst(
                lambda r: r.status == "diverged",
                lambda r: (
                    f"diverged_step {r.row.get('diverged_step')}, first non-finite "
                    f"train loss at step {r.row.get('first_nonfinite_step')}"
                ),
            ),
        ),
        ("Failed", lst(lambda r: r.status == "failed", reason)),
        ("Cancelled or lost (a relaunch runs them)", lst(lambda r: r.status in ("cancelled", "lost"), reason)),
        (
            "Pending or running",
            lst(lambda r: r.status in ("pending", "running"), lambda r: f"last step {r.row.get('max_step')}"),
        ),
        (
            "Unknown (scheduler not answering, or not in the manifest)",
            lst(lambda r: r.status not in _STATUS_ORDER[:-1], reason),
        ),
        (
            "Non-finite training loss but status not 'diverged'",
            lst(
                lambda r: r.status != "diverged" and r.row.get("first_nonfinite_step") is not None,
                lambda r: f"status {r.status}, first non-finite at step {r.row.get('first_nonfinite_step')}",
            ),
        ),
        (
            "Unreadable log lines skipped",
            lst(
                lambda r: (r.row.get("n_bad_lines") or 0) > 0,
                lambda r: (
                    f"{r.row['n_bad_lines']} lines" + (" (truncated last line)" if r.row.get("truncated_tail") else "")
                ),
            ),
        ),
    ]


def _status_table(
    runs: list[Run], variants: list[str], sweeps: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """Runs by status per variant (per sweep and variant when sweeps are compared), then all."""
    statuses = [s for s in _STATUS_ORDER if any(r.status == s for r in runs)]
    statuses += sorted({r.status for r in runs} - set(statuses))
    groups: list[tuple[list[str], list[Run]]] = []
    for sweep in sweeps:
        for v in variants:
            mine = [r for r in runs if r.variant == v and r.params[SWEEP_COLUMN] == sweep]
            if mine:  # a variant one sweep does not have
                groups.append(([sweep, v], mine))
    if not sweeps:
        groups = [([v], [r for r in runs if r.variant == v]) for v in variants]
    groups.append((["**all**", *[""] * bool(sweeps)], runs))
    header = [*[SWEEP_COLUMN] * bool(sweeps), "variant", "runs", *statuses]
    body = [[*name, str(len(rs)), *[str(sum(r.status == s for r in rs)) for s in statuses]] for name, rs in groups]
    return header, body


def heat_tables(
    grids: list[HeatGrid], row_axis: str | None, col_axis: str | None, value_format: str = "{:.4f}"
) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for g in grids:
        corner = f"{row_axis} \\ {col_axis}" if row_axis and col_axis else row_axis or col_axis or ""
        header = [corner, *([fmt(v) for v in g.cols] if col_axis else ["median (completed / runs)"])]
        body = []
        for rv in g.rows:
            row = [fmt(rv) if row_axis else "all runs"]
            for cv in g.cols:
                c = g.cells[(rv, cv)]
                row.append(
                    "—"
                    if not c.runs
                    else (
                        f"{value_format.format(c.median)} ({len(c.values)}/{len(c.runs)})"
                        if c.median is not None
                        else "no value (" + c.why_empty().replace("\n", ", ") + ")"
                    )
                )
            body.append(row)
        out.append((g.title, header, body))
    return out


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def data_banner(runs: list[Run]) -> list[str]:
    """One warning line (and a blank) when runs trained on generated data, as their run.json says."""
    said = [str(r.row.get("data") or "") for r in runs]
    synthetic = sorted({d for d in said if d.startswith(SYNTHETIC_DATA)})
    if not synthetic:
        return []
    n = sum(d.startswith(SYNTHETIC_DATA) for d in said)
    return [f"> **⚠ Synthetic data**: {n} of {len(runs)} runs trained on generated data ({'; '.join(synthetic)})", ""]


def _compared(res: CollectResult, layout: Layout, out_dir: Path) -> list[str]:
    """The sweeps a comparison joins: each one's line style, runs and directory."""
    if not isinstance(res, CompareResult):
        return []
    lines = [f"Sweeps compared (column `{SWEEP_COLUMN}` of the tables):", ""]
    for label, part in zip(res.labels, res.sweeps):
        style = LINESTYLE_NAMES[layout.style[label]]
        where = os.path.relpath(part.sweep_dir, out_dir)
        lines.append(f"- **{label}**: {style} lines, {part.runs_total} run{'s' * (part.runs_total != 1)}, `{where}/`")
    return [*lines, ""]


def _write_index(
    out_dir: Path,
    res: CollectResult,
    runs: list[Run],
    variants: list[str],
    grids: list[HeatGrid],
    row_axis: str | None,
    col_axis: str | None,
    layout: Layout,
) -> None:
    import markdown_it  # rich's dependency: renders the markdown page as the html one

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    rel = os.path.relpath(res.out_dir, out_dir)
    status_h, status_b = _status_table(runs, variants, res.labels if isinstance(res, CompareResult) else ())
    rows_line = ", ".join(f"{k} {n}" for k, n in res.rows.items())
    note = (
        f"{layout.encoding().capitalize()}; thin lines are single runs (training loss: mean over "
        "log-spaced step bins), bold lines the median over the seeds of a group; x marks a diverged run's "
        "last finite value. The heat map and its tables use only completed runs (best validation loss per "
        "run, median over seeds)."
    )
    md = [
        f"# Sweep report: {res.sweep_name}",
        "",
        *data_banner(runs),
        f"Generated {now} from `{rel}/` ({rows_line} rows).",
        "",
        *_compared(res, layout, out_dir),
        note,
        "",
        "## Runs by status",
        "",
        md_table(status_h, status_b),
        "",
    ]
    section = res.sweep_dir / ANALYSIS_DIR / ANALYSIS_SECTION
    if section.is_file():  # `analyze` wrote its part: link it, with its own tables
        md += [section.read_text().replace("](", f"]({os.path.relpath(section.parent, out_dir)}/"), ""]
    md += ["## Plots", ""] + [f"- [{t}]({f})" for f, t in PLOTS.items()] + [""]
    md += [f"### {t}\n\n![{t}]({f})\n" for f, t in PLOTS.items()]
    md += [f"## Median best validation loss, {axes_title(row_axis, col_axis)} (completed runs / runs in cell)", ""]
    for title, h, b in heat_tables(grids, row_axis, col_axis):
        md += [f"### {title}", "", md_table(h, b), ""]
    md += ["## Problem runs", ""]
    for title, items in _run_lists(runs):
        md += [f"### {title} ({len(items)})", ""]
        md += [f"- `{rid}`" + (f": {d}" if d else "") for rid, d in items] or ["none"]
        md += [""]
    text = "\n".join(md)
    (out_dir / "index.md").write_text(text)
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}"
        "blockquote{background:#fff3cd;border-left:6px solid #d9822b;margin:1em 0;padding:.3em 1em}"
    )
    body = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(res.sweep_name)} report</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )
    (out_dir / "index.html").write_text(page)
