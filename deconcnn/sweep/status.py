"""Where a sweep stands, run by run.

Truth comes from each run's run.json first (SLURM reports a job that raised as COMPLETED, hydra
#1928), then from one sacct call for the whole sweep for what run.json cannot know: pending,
running, cancelled, timed out, out of memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog.run_status import FINAL_STATUSES, PROCESS_FILE, RUN_LOG, read_run_status
from deconcnn.sweep import slurm
from deconcnn.sweep.manifest import SweepDir

STATES = ("pending", "running", "completed", "failed", "diverged", "missing")
RESUBMITTABLE = ("failed", "missing")
SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                 "CONFIGURING"}
SLURM_ACTIVE = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
PID_START_SLACK_S = 2.0  # /proc's boot time has whole seconds


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


def _restarted(run_dir: Path, run: dict[str, Any]) -> bool:
    """A new process for the run started after the attempt that run.json describes ended."""
    try:
        started = json.loads((run_dir / PROCESS_FILE).read_text())["started"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False
    return started > (run.get("end_time") or float("inf"))


def _process_start_time(pid: int) -> float | None:
    """When a live process started (epoch seconds), None when there is no such live process.

    Where /proc is missing the start time is unknown: a live pid then reads as started at 0."""
    stat_path = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by whatever started it
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks


def dead_process(run_dir: Path, run: dict[str, Any], submitted: float | None = None) -> str | None:
    """Why a run whose run.json says running cannot be running, or None if it may be.

    Decidable only on the host that ran it: the process of the run's latest attempt is gone there,
    or its pid now belongs to a process started later (recycled). The latest attempt is run.json's,
    unless run_pack has since started a newer one (process.json is newer than run.json's start):
    a requeued run is then judged by the new process, which has not rewritten run.json yet. An
    attempt that started before the run's last submission (`submitted`) says nothing about it: the
    new one may still be waiting for its turn.
    """
    pid, host, since = run.get("pid"), run.get("host"), float(run.get("start_time") or 0)
    try:
        newer = json.loads((run_dir / PROCESS_FILE).read_text())
        if float(newer["started"]) > since:
            pid, host, since = newer["pid"], newer["host"], float(newer["started"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    if not isinstance(pid, int) or host != socket.gethostname() or since < (submitted or 0):
        return None
    started = _process_start_time(pid)
    if started is not None and started <= since + PID_START_SLACK_S:
        return None
    return f"its process (pid {pid} on {host}) is gone but run.json says running (killed?)"


def sweep_states(sweep_dir: Path, use_sacct: bool = True) -> list[RunState]:
    sd = SweepDir(Path(sweep_dir))
    manifest = sd.read_manifest()
    if manifest is None:
        raise NotASweep(f"{sweep_dir} is not a sweep directory (no manifest.json): launch it first")
    entries = manifest["runs"]
    slurm_jobs = [s["job_id"] for s in map(last_submission, entries.values())
                  if s and s["executor"] == "slurm"]
    sacct: dict[str, str] = {}
    if slurm_jobs and use_sacct and slurm.slurm_available():
        try:
            sacct = slurm.sacct_states(slurm_jobs)
        except slurm.SlurmError as error:  # run.json still tells what finished; say what is unknown
            warnings.warn(f"SLURM job states unknown: {error}".splitlines()[0], stacklevel=2)
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
        elif run and run.get("status") == "failed" and slurm_state in SLURM_WAITING:
            state = "pending"  # requeued after a preemption or timeout killed the attempt
        elif run and run.get("status") == "failed" and _restarted(run_dir, run):
            state, reason = _from_scheduler(run, submission or {"executor": "local"}, slurm_state,
                                            launch_running)
        elif run and run.get("status") == "failed":
            state, reason = "failed", run.get("error") or "failed"
        elif submission is None:
            state = "missing"
        else:
            state, reason = _from_scheduler(run, submission, slurm_state, launch_running)
            # A packed task stays RUNNING while a sibling runs: a killed run's own process says more.
            if state == "running" and run is not None:
                gone = dead_process(run_dir, run, submission.get("time"))
                again = read_run_status(run_dir) if gone else None
                if again is not None and again.get("status") in FINAL_STATUSES:  # it just ended
                    state = "failed" if again["status"] == "failed" else again["status"]
                    reason = again.get("error") if state == "failed" else None
                elif gone:
                    state, reason = "failed", gone
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
