"""Where a sweep stands, run by run.

Truth comes from each run's run.json first (SLURM reports a job that raised as COMPLETED, hydra
#1928), then from one sacct call for the whole sweep for what run.json cannot know: pending,
running, cancelled, timed out, out of memory.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog.run_status import read_run_status
from deconcnn.sweep import slurm
from deconcnn.sweep.executors import RUN_LOG
from deconcnn.sweep.manifest import SweepDir

STATES = ("pending", "running", "completed", "failed", "diverged", "missing")
RESUBMITTABLE = ("failed", "missing")
SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                 "CONFIGURING"}
SLURM_ACTIVE = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


class NotASweep(FileNotFoundError):
    pass


@dataclass
class RunState:
    run_id: str
    variant: str
    state: str
    reason: str | None
    attempts: int
    job_id: str | None
    slurm_state: str | None
    run_dir: str
    log: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def last_submission(entry: dict[str, Any]) -> dict[str, Any] | None:
    return entry["submissions"][-1] if entry.get("submissions") else None


def _from_scheduler(run: dict[str, Any] | None, submission: dict[str, Any], slurm_state: str | None,
                    launch_running: bool) -> tuple[str, str | None]:
    """State of a run whose run.json is absent or says running, from what ran it."""
    started = run is not None
    if submission["executor"] == "local":
        if launch_running:
            return ("running" if started else "pending"), None
        return "failed", "the local launch ended before this run finished (killed?)"
    if slurm_state is None:  # sacct lags the submission by a few seconds
        return ("running" if started else "pending"), None
    if slurm_state in SLURM_WAITING:
        return "pending", None
    if slurm_state in SLURM_ACTIVE:
        return "running", None
    if slurm_state == "COMPLETED":
        return "failed", "SLURM job ended but the run did not finish (see its log)"
    return "failed", slurm_state


def sweep_states(sweep_dir: Path, use_sacct: bool = True) -> list[RunState]:
    sd = SweepDir(Path(sweep_dir))
    manifest = sd.read_manifest()
    if manifest is None:
        raise NotASweep(f"{sweep_dir} is not a sweep directory (no manifest.json): launch it first")
    entries = manifest["runs"]
    slurm_jobs = [s["job_id"] for s in map(last_submission, entries.values())
                  if s and s["executor"] == "slurm"]
    sacct = slurm.sacct_states(slurm_jobs) if slurm_jobs and use_sacct and slurm.slurm_available() else {}
    launch_running = sd.is_locked()
    states = []
    for run_id, entry in entries.items():
        run_dir = sd.run_dir(run_id)
        run = read_run_status(run_dir)
        submission = last_submission(entry)
        job_id = submission.get("job_id") if submission else None
        slurm_state = sacct.get(job_id) if job_id else None
        reason = None
        if run and run.get("status") in ("completed", "diverged"):
            state = run["status"]
            if state == "diverged":
                reason = f"diverged at step {run.get('diverged_step')}"
        elif run and run.get("status") == "failed":
            state, reason = "failed", run.get("error") or "failed"
        elif submission is None:
            state = "missing"
        else:
            state, reason = _from_scheduler(run, submission, slurm_state, launch_running)
        log = run_dir / RUN_LOG
        states.append(RunState(run_id, entry["variant"], state, reason, entry.get("attempts", 0), job_id,
                               slurm_state, str(run_dir),
                               str(log) if log.exists() else (submission or {}).get("log")))
    return states


def summarize(states: list[RunState]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = {}
    for s in states:
        table.setdefault(s.variant, Counter())[s.state] += 1
    rows = {variant: {"total": sum(c.values()), **{k: c.get(k, 0) for k in STATES}}
            for variant, c in table.items()}
    rows["all"] = {key: sum(r[key] for r in rows.values()) for key in ("total", *STATES)}
    return rows


def status_json(sweep_dir: Path) -> dict[str, Any]:
    states = sweep_states(sweep_dir)
    return {"sweep_dir": str(sweep_dir), "time": time.time(), "counts": summarize(states),
            "runs": [s.to_json() for s in states]}


def render(sweep_dir: Path, states: list[RunState]) -> Any:
    """A rich renderable: counts by variant, then each failed run with its reason and log."""
    from rich.console import Group
    from rich.table import Table

    counts = summarize(states)
    table = Table(title=f"sweep {sweep_dir}")
    table.add_column("variant")
    for key in ("total", *STATES):
        table.add_column(key, justify="right")
    for variant, row in counts.items():
        style = "bold" if variant == "all" else None
        table.add_row(variant, *(str(row[k]) for k in ("total", *STATES)), style=style)
    parts: list[Any] = [table]
    failed = [s for s in states if s.state == "failed"]
    if failed:
        detail = Table(title="failed runs", show_lines=False)
        for column in ("run", "reason", "log"):
            detail.add_column(column, overflow="fold")
        for s in failed:
            detail.add_row(s.run_id, s.reason or "", s.log or s.run_dir)
        parts.append(detail)
    report = Path(sweep_dir) / "report" / "index.html"
    if report.exists():
        parts.append(f"report: {report}")
    return Group(*parts)
