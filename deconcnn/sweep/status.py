"""deconcnn-sweep status: where a sweep stands, run by run (states: deconcnn.sweep.state)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from deconcnn.sweep.state import STATES, RunState, poll_submissions, sweep_states
from deconcnn.sweep.sweepdir import REPORT_DIR, SweepDir

DETAIL_STATES = ("failed", "lost", "cancelled", "pending", "unknown")


def current_states(sweep_dir: Path) -> list[RunState]:
    sd = SweepDir(sweep_dir)
    manifest = sd.require_manifest()
    return sweep_states(sd.path, manifest, poll_submissions(manifest), sd.cancellations())


def summarize(states: list[RunState]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = {}
    for s in states:
        table.setdefault(s.variant, Counter())[s.state] += 1
    rows = {variant: {"total": sum(c.values()), **{k: c.get(k, 0) for k in STATES}} for variant, c in table.items()}
    rows["all"] = {key: sum(r[key] for r in rows.values()) for key in ("total", *STATES)}
    return rows


def status_json(sweep_dir: Path, states: list[RunState]) -> dict[str, Any]:
    return {"sweep_dir": str(sweep_dir), "time": time.time(), "counts": summarize(states),
            "runs": [s.to_json() for s in states]}


def render(sweep_dir: Path, states: list[RunState]) -> Any:
    """A rich renderable: counts by variant (only the states that occur), then every run that is
    not done with its reason and log."""
    from rich.console import Group
    from rich.table import Table

    counts = summarize(states)
    shown = [k for k in STATES if counts["all"][k]] or ["completed"]
    table = Table(title=f"sweep {sweep_dir}")
    table.add_column("variant")
    for key in ("total", *shown):
        table.add_column(key, justify="right")
    for variant, row in counts.items():
        style = "bold" if variant == "all" else None
        table.add_row(variant, *(str(row[k]) for k in ("total", *shown)), style=style)
    parts: list[Any] = [table]
    for state in DETAIL_STATES:
        runs = [s for s in states if s.state == state]
        if not runs:
            continue
        detail = Table(title=f"{state} runs")
        for column in ("run", "reason", "log"):
            detail.add_column(column, overflow="fold")
        for s in runs:
            detail.add_row(s.run_id, s.reason or "", s.log or s.run_dir)
        parts.append(detail)
    report = Path(sweep_dir) / REPORT_DIR / "index.html"
    if report.exists():
        parts.append(f"report: {report}")
    return Group(*parts)
