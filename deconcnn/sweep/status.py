"""deconcnn-sweep status: where a sweep stands, run by run (states: deconcnn.sweep.state).

The table has one row per state that occurs and one column per variant, so it fits 80 columns
whatever the states; running runs show their progress (step / total, last training loss, an ETA
from the stamped pace of their recent steps), read from the tail of their own metric log.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconcnn.backends import Backend, BackendError
from deconcnn.backends.registry import backend_class
from deconcnn.runlog.atomic import json_text_by_line
from deconcnn.runlog.layout import HYDRA_CONFIG, HYDRA_DIR, REPORT_DIR, is_multirun
from deconcnn.runlog.metrics_log import METRICS_FILE
from deconcnn.runlog.records import gc_paused
from deconcnn.runlog.run_status import read_run_status
from deconcnn.runlog.schema import EPOCH_FRAC_KEY, KIND_KEY, STEP_KEY, TIME_KEY, TRAIN
from deconcnn.runlog.states import FINAL_STATES, STATES
from deconcnn.sweep.state import RunState, multirun_states, sweep_states
from deconcnn.sweep.state_cache import RunStatusCache
from deconcnn.sweep.sweepdir import SweepDir

DETAIL_STATES = ("failed", "lost", "cancelled", "pending", "unknown")
TAIL_BYTES = 1024 * 1024  # ~5000 steps of records of every kind
CONFIG_FILE = Path(HYDRA_DIR) / HYDRA_CONFIG


@dataclass(frozen=True)
class Progress:
    step: int
    total: int | None
    loss: float | None
    eta_s: float | None

    def text(self) -> tuple[str, str, str]:
        done = f"{self.step}/{self.total} ({100 * self.step / self.total:.0f}%)" if self.total else str(self.step)
        loss = f"{self.loss:.4g}" if self.loss is not None else "-"
        eta = (
            "-"
            if self.eta_s is None
            else time.strftime("%H:%M:%S", time.gmtime(self.eta_s))
            if self.eta_s < 86400
            else f"{self.eta_s / 86400:.1f} d"
        )
        return done, loss, eta


def _total_steps(run_dir: Path, steps_per_epoch: float) -> int | None:
    """Steps the run will take: its composed config's max_epochs x its steps per epoch."""
    from omegaconf import OmegaConf

    try:
        return round(int(OmegaConf.load(run_dir / CONFIG_FILE).trainer.max_epochs) * steps_per_epoch)
    except Exception:  # noqa: BLE001 - no config (yet), or not ours: no total, no ETA
        return None


def _train_record(line: bytes) -> dict[str, Any] | None:
    if b'"train"' not in line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get(KIND_KEY) == TRAIN.name else None


def run_progress(run_dir: Path, now: float | None = None) -> Progress | None:
    """The last training record of a run and what it says about the rest (None: none yet).

    The pace is the stamped wall time per step across the training records of the log's tail
    (TAIL_BYTES: thousands of steps, so the monitors' pauses are averaged in) since this attempt
    started. The log is written in bursts (every flush), so the time since the last record counts
    as work done: the ETA counts down between flushes instead of holding, then jumping.
    """
    try:
        with open(run_dir / METRICS_FILE, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - TAIL_BYTES))
            lines = log.read().splitlines()
    except OSError:
        return None
    run = read_run_status(run_dir)
    started = (run.start_time if run else None) or 0.0  # an earlier attempt's pace is not this one's
    body = lines[1:] if len(lines) > 1 else lines  # the first may be cut
    last = next((r for r in map(_train_record, reversed(body)) if r), None)
    if last is None:
        return None
    # Few records are parsed (the last, and the first of this attempt): status reads hundreds of tails.
    first = next((r for r in map(_train_record, body) if r and r[TIME_KEY] >= started), last)
    step, frac = int(last[STEP_KEY]), last.get(EPOCH_FRAC_KEY)
    total = _total_steps(run_dir, (step + 1) / frac) if frac else None
    eta = None
    if total and last[STEP_KEY] > first[STEP_KEY] and last[TIME_KEY] > first[TIME_KEY]:
        pace = (last[TIME_KEY] - first[TIME_KEY]) / (last[STEP_KEY] - first[STEP_KEY])
        in_flight = max(0.0, (time.time() if now is None else now) - last[TIME_KEY])
        eta = max(0.0, (total - step - 1) * pace - in_flight)
    return Progress(step + 1, total, last.get("loss_train_nats"), eta)


def current_states(sweep_dir: Path) -> list[RunState]:
    """Every run's state: a sweep directory's by its manifest and executors, a Hydra multirun
    directory's by its jobs' own files."""
    if is_multirun(sweep_dir):
        return multirun_states(sweep_dir)
    sd = SweepDir(sweep_dir)
    with gc_paused():
        manifest = sd.require_manifest()
        run_status = RunStatusCache(sd.path)
        states = sweep_states(sd.path, manifest, sd.cancellations(), run_status)
        run_status.save()
    return states


def watch_floor(sweep_dir: Path) -> float:
    """The least seconds between `status --watch` refreshes: the highest floor of the backends the
    runs' last submissions went to (a SLURM refresh asks squeue and sacct), the base floor for a
    Hydra multirun directory, which is only read."""
    if is_multirun(sweep_dir):
        return Backend.watch_min_s
    manifest = SweepDir(sweep_dir).require_manifest()
    kinds = {entry.last_submission.executor for entry in manifest.runs.values() if entry.last_submission}
    floors = [Backend.watch_min_s]
    for kind in kinds:
        with suppress(BackendError):  # not installed here: its runs read unknown, nothing is polled
            floors.append(backend_class(kind).watch_min_s)
    return max(floors)


def all_final(states: list[RunState]) -> bool:
    return all(s.state in FINAL_STATES for s in states)


class WatchEnd:
    """When `status --watch` ends: at a refresh where every run is final, no launch of the sweep
    is live (SweepDir.launch_live) and the refresh before saw the same with the same manifest. A
    relaunch started after the watch holds the lock from its validation on, or has written a new
    submission by the next refresh: the watch follows it instead of ending on the old one's states.
    Called once per refresh with that refresh's states."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.previous: tuple[bool, bool, tuple[tuple[int, ...], ...]] | None = None

    def __call__(self, states: list[RunState]) -> bool:
        if is_multirun(self.sweep_dir):  # no launch: its jobs' own files are all there is
            return all_final(states)
        sd = SweepDir(self.sweep_dir)
        now = (all_final(states), sd.launch_live(), sd.written())
        done = now[0] and not now[1] and now == self.previous
        self.previous = now
        return done


def summarize(states: list[RunState]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for s in states:
        table[s.variant][s.state] += 1
    rows = {variant: {"total": sum(c.values()), **{k: c.get(k, 0) for k in STATES}} for variant, c in table.items()}
    rows["all"] = {key: sum(r[key] for r in rows.values()) for key in ("total", *STATES)}
    return rows


def status_json(sweep_dir: Path, states: list[RunState]) -> dict[str, Any]:
    # The running runs' progress reads their composed configs (OmegaConf: cyclic garbage) first.
    progress = {s.run_id: run_progress(Path(s.run_dir)) for s in states if s.state == "running"}
    with gc_paused():  # 50,000 runs' dicts
        runs = [s.to_json(progress=p.__dict__ if (p := progress.get(s.run_id)) else None) for s in states]
        return {
            "sweep_dir": str(sweep_dir),
            "time": time.time(),
            "counts": summarize(states),
            "runs": runs,
            "final": all_final(states),
        }


def json_text(document: dict[str, Any], one_line: bool = False) -> str:
    """`status --json`'s text: one run per line (`one_line`: the whole document on one, as --watch
    prints them)."""
    with gc_paused():
        return json.dumps(document) if one_line else json_text_by_line(document, "runs").rstrip("\n")


def render(sweep_dir: Path, states: list[RunState]) -> Any:
    """A rich renderable: states x variants, then the running runs' progress, then every run
    that is not done with its reason and log."""
    from rich.console import Group
    from rich.table import Table

    counts = summarize(states)
    shown = [k for k in STATES if counts["all"][k]] or ["completed"]
    table = Table(title=f"sweep {sweep_dir} ({counts['all']['total']} runs), {time.strftime('%H:%M:%S')}")
    table.add_column("state")
    for variant in counts:
        table.add_column(variant, justify="right", style="bold" if variant == "all" else None)
    for state in shown:
        table.add_row(state, *(str(counts[v][state]) for v in counts))
    parts: list[Any] = [table]
    running = [(s, run_progress(Path(s.run_dir))) for s in states if s.state == "running"]
    if running:
        detail = Table(title="running runs")
        for column in ("run", "step/total", "loss", "ETA"):
            detail.add_column(column, overflow="fold")
        for s, progress in running:
            detail.add_row(s.run_id, *(progress.text() if progress else ("starting", "-", "-")))
        parts.append(detail)
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
