"""The run states every layer shows, and the state a run's own files record.

`deconcnn-sweep status` (deconcnn.sweep.state) decides a run's state from its files AND the
scheduler's answer AND whether its process is alive. The analysis (collect, report, analyze) asks
no scheduler and no process: it shows the state its files record, by `recorded_state` below. The
two agree on every finished run (completed, diverged, failed, cancelled, missing); for an
unfinished one the files can only say how far it got (run.json running: running; submitted
without a run.json of that submission: pending), so a killed or lost run reads as running or
pending here until `status` (or a relaunch) looks at it.
"""

from __future__ import annotations

from deconcnn.runlog.records import UNREADABLE, RunStatus, RunSubmission
from deconcnn.runlog.run_status import KEEP_STATUSES

STATES = ("pending", "running", "completed", "diverged", "failed", "cancelled", "lost", "missing", "unknown")
FINAL_STATES = ("completed", "diverged", "failed", "cancelled", "lost", "missing")
RESUBMITTABLE = ("failed", "cancelled", "lost", "missing")
LIVE_STATES = ("pending", "running")
#: The reason an unfinished run's recorded state carries: no scheduler or process was asked.
AS_RECORDED = "as its files record it (`deconcnn-sweep status` asks the scheduler)"


def kept_state(run: RunStatus | None) -> tuple[str, str | None] | None:
    """(state, reason) of a run whose run.json (as read_checked_status reads it) holds a result
    (completed, diverged), else None."""
    if not run or run.status not in KEEP_STATUSES:
        return None
    return run.status, (f"diverged at step {run.diverged_step}" if run.status == "diverged" else None)


def recorded_job_state(run: RunStatus | None) -> tuple[str, str | None]:
    """(state, reason) of a run that has only its run.json (as read_checked_status reads it) to speak
    for it (a Hydra multirun job)."""
    if run is None:
        return "missing", "no run.json: not started, or stopped before training began (see its stdout.log)"
    kept = kept_state(run)
    if kept:
        return kept
    if run.status in ("failed", UNREADABLE):
        return "failed", run.error or "failed"
    return "running", f"run.json says running, {AS_RECORDED}"


def recorded_state(
    submission: RunSubmission | None, run: RunStatus | None, cancelled: tuple[float, str] | None
) -> tuple[str, str | None]:
    """(state, reason) of a sweep's run from its manifest entry's last submission, its run.json and
    its latest cancellation (time, by): the module doc says what this leaves to `status`. An
    unreadable run.json is not trusted, not even for whose attempt it was: the state is the one
    without it."""
    if run and run.status == UNREADABLE:
        run = None
    kept = kept_state(run)
    if kept:
        return kept
    if submission is None:
        return "missing", None
    if cancelled and cancelled[0] >= submission.time:
        return "cancelled", f"cancelled by {cancelled[1]}"
    attempt = run if run and run.submission_id == submission.id else None
    if attempt is None:
        return "pending", f"submitted, not started {AS_RECORDED}"
    return recorded_job_state(attempt)
