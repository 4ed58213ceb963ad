"""The check's result for a person: the checklist table and the list of what the check runs changed."""

from __future__ import annotations

from typing import Any

from deconcnn.sweep.check.rules import CHECK_CURVATURE_BATCH, CHECK_CURVATURE_FIRINGS, CHECK_DEBUG, ITEMS
from deconcnn.sweep.check.runner import CheckResult


def render(result: CheckResult) -> Any:
    """The checklist as a rich table: one row per item, one column per variant; an item whose result
    is the same for every variant is said once."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"pre-launch check: {result.sweep} ({'PASSED' if result.passed else 'FAILED'})", show_lines=True
    )
    table.add_column("item", style="bold", max_width=28)
    for variant in result.variants:
        table.add_column(variant, overflow="fold")

    def cell(r: Any) -> str:
        mark = "[green]✔[/green]" if r.passed else "[red]✘[/red]"
        change = f" [yellow]changed: {escape(r.change)}[/yellow]" if r.change else ""
        return f"{mark} {escape(r.detail)}{change}"

    for item, label in ITEMS.items():
        results = [result.items[item].get(v) for v in result.variants]
        if len(result.variants) > 1 and results[0] is not None and all(r == results[0] for r in results):
            table.add_row(label, cell(results[0]) + " [dim](all variants)[/dim]", *[""] * (len(results) - 1))
        else:
            table.add_row(label, *("" if r is None else cell(r) for r in results))
    return table


def shrink_summary(result: CheckResult) -> list[str]:
    schedules = {(c.schedule.steps_per_epoch, c.schedule.epochs) for c in result.checks}
    sizes = ", ".join(f"{spe} steps/epoch x {epochs} epochs" for spe, epochs in sorted(schedules))
    lines = [
        f"check runs: debug={CHECK_DEBUG} (synthetic data, {sizes}), curvature period scaled to fire "
        f"{CHECK_CURVATURE_FIRINGS} times, curvature and gradient-noise batches of {CHECK_CURVATURE_BATCH}; "
        "schedules otherwise as configured"
    ]
    for check in result.checks:
        for note in check.notes:
            lines.append(f"{check.variant}: {note}")
    return lines
