"""A run's state: ONE function from the run's own files and the executor's answer.

| the run's files say                 | the executor says                        | state                | relaunch |
|-------------------------------------|------------------------------------------|----------------------|----------|
| run.json completed / diverged       | -                                        | completed / diverged | keep     |
| run.json completed, log missing/cut | -                                        | as run.json failed   | resubmit |
| run.json unreadable                 | -                                        | see (3)              | see (3)  |
| never submitted                     | -                                        | missing              | submit   |
| cancelled (cancel.jsonl) since      | no process of this submission alive      | cancelled            | resubmit |
| process.json: this submission, live | -                                        | running              | leave    |
| -                                   | pending (SLURM PENDING, requeued)        | pending              | leave    |
| -                                   | SLURM COMPLETING (ending or requeued)    | running              | leave    |
| process.json: this submission, dead | -                                        | failed               | resubmit |
| -                                   | running (SLURM task; live local launch)  | running (1)          | leave    |
| -                                   | scheduler unreachable                    | unknown              | leave    |
| run.json failed (this submission)   | ended / unknown                          | failed (its error)   | resubmit |
| nothing final                       | ended (SLURM state)                      | failed (2)           | resubmit |
| nothing final                       | unknown to the scheduler, no live launch | lost                 | resubmit |
| runs/<id> is a symbolic link        | -                                        | failed (refused)     | refused  |

(1) pending until its process starts. (2) with the SLURM state as its error; cancelled for CANCELLED.
(3) none of it is trusted, not even whose attempt it was: the state is the table's without it, and
where that is failed or lost it is failed with "run.json unreadable: ..." (resubmit).

"This submission": run.json and process.json carry the id of the submission that started them
(DECONCNN_SUBMISSION_ID), so a previous attempt's files never speak for a newer submission. A
requeued task keeps its submission: while it runs again, a process.json from before its current
start (squeue's StartTime) is its previous run's, and the table is read as if it and run.json were
absent (pending until the run restarts, not failed by the SIGTERM of the requeue). SLURM
reports a job that raised as COMPLETED (hydra #1928): run.json is trusted over it. A process is
judged alive by pid and start time, only on the host that runs it.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, cast

from deconcnn.backends import BackendError, Handle, SchedulerState, processes
from deconcnn.backends.registry import attach, backend_class
from deconcnn.runlog.layout import job_variant, multirun_jobs
from deconcnn.runlog.records import (
    UNREADABLE,
    Manifest,
    ProcessRecord,
    RecordError,
    RunEntry,
    RunStatus,
    RunSubmission,
)
from deconcnn.runlog.run_status import PROCESS_FILE, RUN_LOG, read_checked_status, read_small_file
from deconcnn.runlog.states import kept_state, recorded_job_state
from deconcnn.sweep.state_cache import RunStatusCache


@dataclass
class RunState:
    run_id: str
    variant: str
    state: str
    reason: str | None
    attempts: int
    job_id: str | None
    scheduler_state: str | None
    run_dir: str
    log: str | None

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """Its fields (plain values: no copy of asdict's needed), then `extra`'s keys."""
        return dict(vars(self), **extra)


def read_process(run_dir: str | Path) -> ProcessRecord | None:
    """A run's process.json; None when it is absent or damaged (or of a newer format)."""
    try:
        return ProcessRecord.from_json(json.loads(read_small_file(os.path.join(run_dir, PROCESS_FILE))))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError, RecordError):
        return None


def run_state(
    submission: RunSubmission | None,
    run: RunStatus | None,
    process: ProcessRecord | None,
    live: SchedulerState | None,
    cancelled: tuple[float, str] | None,
) -> tuple[str, str | None]:
    """(state, reason) of one run, by the table in the module doc; `run` as read_checked_status reads it."""
    if run and run.status == UNREADABLE:
        state, reason = run_state(submission, None, process, live, cancelled)
        return ("failed", f"{run.error}; {reason}") if state in ("failed", "lost") else (state, reason)
    kept = kept_state(run)
    if kept:
        return kept
    if submission is None:
        return "missing", None
    sid = submission.id
    live = live or SchedulerState("unknown")
    ours = process if process and process.submission_id == sid else None
    attempt = run if run and run.submission_id == sid else None
    process_alive = processes.alive(ours) if ours else None
    requeued = (
        ours is not None
        and process_alive is False
        and live.state == "running"
        and live.since is not None
        and (live.since if ours.started is None else ours.started) < live.since
    )
    if requeued:  # a requeue keeps the submission; the files of the task's previous run are history
        ours = attempt = process_alive = None
    if cancelled and cancelled[0] >= submission.time:
        if process_alive:
            return "running", f"stopping: cancelled by {cancelled[1]}"
        return "cancelled", f"cancelled by {cancelled[1]}"
    if process_alive:
        return "running", None
    if live.state == "pending":
        return "pending", live.detail
    if live.state == "running" and live.detail == "COMPLETING":  # a requeue passes through it too
        return "running", "its SLURM task is completing"
    if process_alive is False:
        assert ours is not None  # only a process record of ours is asked whether it is alive
        if attempt and attempt.status == "failed":
            return "failed", attempt.error or "failed"
        return "failed", (
            f"its process (pid {ours.pid} on {ours.host}) is gone, and run.json does not say how it ended (killed?)"
        )
    if live.state == "running":
        if attempt and attempt.status == "failed":
            return "failed", attempt.error or "failed"
        if ours:
            return "running", None
        if in_its_launch(submission):
            return "pending", "queued in its local launch: it starts when a slot frees"
        return "pending", f"its task {'was requeued and ' if requeued else ''}is running; the run has not started yet"
    if live.state == "unreachable":
        return "unknown", f"scheduler not answering: {live.detail}"
    if attempt and attempt.status == "failed":
        return "failed", attempt.error or "failed"
    if live.state == "ended":
        if live.detail == "CANCELLED":
            return "cancelled", "CANCELLED by the scheduler (scancel?)"
        if live.detail == "COMPLETED":
            return "failed", "its SLURM task ended but the run did not finish (see its log)"
        return "failed", f"its SLURM task ended {live.detail} before the run finished"
    where = "its launch is gone" if in_its_launch(submission) else "the scheduler does not know its job"
    return "lost", f"submitted but never finished, and {where} (killed launcher, cancelled pending task?)"


def in_its_launch(submission: RunSubmission) -> bool:
    """The submission's packs live in the launch that submitted them (a backend that is not
    detached: the local pool), so a live launch is their only scheduler."""
    try:
        return not backend_class(submission.executor).detached
    except BackendError:  # a backend not installed here: as a scheduler's, its launch is not asked
        return False


def submitted_handle(submission: RunSubmission | None) -> Handle | None:
    """The handle a manifest's submission record saved, None when it has none."""
    if not submission or not submission.handle:
        return None
    return _handle(submission.executor, submission.handle)


# poll_submissions and sweep_states each ask for every run's: one frozen Handle each. Bounded: a
# `status --watch` lives across relaunches, each with new handles (2**17: a 50,000-run sweep's twice).
@functools.lru_cache(maxsize=1 << 17)
def _handle(kind: str, handle_id: str) -> Handle:
    return Handle(str(kind), str(handle_id))


def sweep_states(
    sweep_dir: Path,
    manifest: Manifest,
    cancellations: dict[str, tuple[float, str]],
    run_status: RunStatusCache | None = None,
    logs: bool = True,
) -> list[RunState]:
    """Every run's state. Finished runs are read through `run_status` (the sweep's cache, made here
    when None), which the caller saves when its command goes through (a refused one changes
    nothing). The backends are asked only about the runs whose own files leave their state open: a
    kept run (completed or diverged, its log whole) is that whatever the scheduler says, so a
    finished 50,000-run sweep with 5% failed asks sacct about 2,500 tasks, not 50,000, and its
    kept runs carry no scheduler state. Without `logs` (a launch needs only the states) no run's
    stdout.log is looked for: each state's log is its submission's."""
    from deconcnn.sweep.sweepdir import SweepDir

    sd = SweepDir(sweep_dir)
    present = run_dirs(sd.runs_dir)
    run_status = run_status or RunStatusCache(sd.path)  # finished runs: a stat of run.json, not a read
    runs_dir = str(sd.runs_dir)
    # First what each run's own files say, then one poll for the runs they leave open, then those
    # runs' files again (what the scheduler says must never be newer than the files it is read with).
    # A kept run's state is its run.json's, so its row is made in the first pass (most of 50,000).
    states: list[RunState | None] = []
    open_runs: list[tuple[int, RunEntry, str, os.DirEntry[str] | None, str | None, RunStatus | None]] = []
    for entry in manifest.ordered_runs():
        run_id = entry.run_id
        run_dir = f"{runs_dir}/{run_id}"  # a plain name: the manifest's run ids are checked when read
        found = present.get(run_id)
        linked = sd.run_dir_problem(run_id) if found and found.is_symlink() else None
        # Nothing is read through a link; launch refuses to write through it.
        run = run_status.read(run_id, run_dir) if found and not linked else None
        kept = None if linked else kept_state(run)
        if kept is None:
            open_runs.append((len(states), entry, run_dir, found, linked, run))
            states.append(None)
            continue
        states.append(_row(entry, *kept, None, run_dir, logs))  # no scheduler: not a kept pack-mate's task
    live = poll_submissions(entry for _, entry, _, _, linked, _ in open_runs if not linked)
    for index, entry, run_dir, found, linked, run in open_runs:
        submission = entry.last_submission
        handle = submitted_handle(submission)
        scheduler = live.get(handle) if handle and not linked else None
        has_dir = found is not None
        if scheduler is not None:
            # Its files again, now that the scheduler has answered: a run that finished between the
            # first read and the poll reads completed, not failed by a task that "ended before it".
            has_dir = has_dir or _plain_dir(run_dir)
            run = run_status.read(entry.run_id, run_dir) if has_dir else None
        reason: str | None
        if linked:
            state, reason = "failed", f"refused: {linked}"
        else:
            # A kept run's state is its run.json's: its process record is not read (50,000 files).
            process = read_process(run_dir) if has_dir and kept_state(run) is None else None
            state, reason = run_state(submission, run, process, scheduler, cancellations.get(entry.run_id))
        states[index] = _row(entry, state, reason, scheduler, run_dir, logs and has_dir and not linked)
    return cast(list[RunState], states)  # every None was filled above


def _row(
    entry: RunEntry, state: str, reason: str | None, scheduler: SchedulerState | None, run_dir: str, own_log: bool
) -> RunState:
    """A run's row; its log is its own stdout.log where `own_log` and that exists, else its submission's."""
    submission = entry.last_submission
    log = f"{run_dir}/{RUN_LOG}" if own_log else None
    return RunState(
        entry.run_id,
        entry.variant,
        state,
        reason,
        entry.attempts,
        submission.job_id if submission else None,
        scheduler.detail if scheduler else None,
        run_dir,
        (log if log and os.path.exists(log) else None) or (submission.log if submission else None),
    )


def _plain_dir(path: str) -> bool:
    """A directory, not a link to one (made since runs/ was listed: a run that just started)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def run_dirs(runs_dir: Path) -> dict[str, os.DirEntry[str]]:
    """The entries of runs/, read at once: a run without one has no file to read."""
    try:
        with os.scandir(runs_dir) as entries:
            return {entry.name: entry for entry in entries}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def job_state(run: RunStatus | None) -> tuple[str, str | None]:
    """(state, reason) of a run that deconcnn-sweep did not start (a Hydra multirun job): its
    run.json alone speaks, with its process asked where it ran on this host."""
    state, reason = recorded_job_state(run)
    if state != "running":
        return state, reason
    assert run is not None
    alive = processes.alive(run.process)
    if alive is False:
        return "failed", f"its process (pid {run.pid} on {run.host}) is gone but run.json says running"
    return "running", None if alive else f"on {run.host}: its process cannot be checked from here"


def multirun_states(path: Path) -> list[RunState]:
    """Every job of a Hydra multirun directory (`deconcnn-train -m`), in job order: its variant from
    its composed config, its state from its run.json (there is no scheduler record to ask)."""
    states = []
    for job in multirun_jobs(path):
        run = read_checked_status(job)
        state, reason = job_state(run)
        log = job / RUN_LOG
        states.append(
            RunState(
                job.name,
                job_variant(job),
                state,
                reason,
                int(run.attempt) if run else 0,
                run.slurm_job_id if run else None,
                None,
                str(job),
                str(log) if log.exists() else None,
            )
        )
    return states


def poll_submissions(entries: Iterable[RunEntry]) -> dict[Handle, SchedulerState]:
    """The backends' answer for the handle of each run's last submission: one poll per backend
    kind, through a backend attached to its handles (SLURM: one squeue and one sacct call for all
    its tasks; local: a process check with psutil). A kind no installed backend has reads
    unreachable, with why: its runs are unknown, never resubmitted as lost."""
    by_kind: dict[str, set[Handle]] = {}
    for entry in entries:
        handle = submitted_handle(entry.last_submission)
        if handle:
            by_kind.setdefault(handle.kind, set()).add(handle)
    live: dict[Handle, SchedulerState] = {}
    for handles in by_kind.values():
        ordered = sorted(handles, key=attrgetter("id"))
        try:
            backend = attach(ordered[0])
        except BackendError as error:
            live.update(dict.fromkeys(ordered, SchedulerState("unreachable", str(error))))
            continue
        live.update(backend.poll(ordered))
    return live
