"""The check's result for a person: the checklist table and the list of what the check runs changed."""

from __future__ import annotations

from typing import Any

from deconcnn.sweep.check.rules import (
    CHECK_BATCH,
    CHECK_CURVATURE_BATCH,
    CHECK_CURVATURE_FIRINGS,
    CHECK_EPOCHS,
    CHECK_STEPS_PER_EPOCH,
    ITEMS,
)
from deconcnn.sweep.check.runner import CheckResult
# ---------------------------------------------------------------- printing


def render(result: CheckResult) -> Any:
    """The checklist as a rich table: one row per item, one column per variant."""
    from rich.table import Table

    table = Table(title=f"pre-launch check: {result.sweep} ({'PASSED' if result.passed else 'FAILED'})",
                  show_lines=True)
    table.add_column("item", style="bold", max_width=28)
    for variant in result.variants:
        table.add_column(variant, overflow="fold")
    for item, label in ITEMS.items():
        cells = []
        for variant in result.variants:
            r = result.items[item].get(variant)
            if r is None:
                cells.append("")
            else:
                mark = "[green]✔[/green]" if r.passed else "[red]✘[/red]"
                cells.append(f"{mark} {_escape(r.detail)}")
        table.add_row(label, *cells)
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def shrink_summary(result: CheckResult) -> list[str]:
    lines = [f"check runs: synthetic data, {CHECK_STEPS_PER_EPOCH} steps/epoch of batch {CHECK_BATCH}, "
             f"{CHECK_EPOCHS} epochs, curvature period scaled to fire {CHECK_CURVATURE_FIRINGS} times, "
             f"curvature and gradient-noise batches of {CHECK_CURVATURE_BATCH}; schedules otherwise "
             "as configured"]
    for check in result.checks:
        for note in check.notes:
            lines.append(f"{check.variant}: {note}")
    return lines
