"""The one run-state function, row by row of its table (deconcnn.sweep.state), on files and
executor answers built here: every state, and which submission the files speak for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from deconcnn.backends import Handle, SchedulerState, processes
from deconcnn.runlog.records import ProcessRecord, RunEntry, RunStatus, RunSubmission
from deconcnn.runlog.states import RESUBMITTABLE
from deconcnn.sweep.state import poll_submissions, run_state

NOW = time.time()
SUBMISSION = RunSubmission("new", "slurm", NOW - 10, "7_0", "7_0", (), None)
LOCAL = replace(SUBMISSION, executor="local")


def exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def process(alive: bool, submission: str = "new", host: str | None = None) -> ProcessRecord:
    pid = os.getpid() if alive else exited_pid()
    ident = replace(processes.identity(pid), submission_id=submission)
    return replace(ident, host=host) if host else ident


def run(status: str, submission: str = "new", **extra) -> RunStatus:
    return RunStatus(status, submission_id=submission, **extra)


PENDING, RUNNING = SchedulerState("pending", "Resources"), SchedulerState("running", "RUNNING")
ENDED = SchedulerState("ended", "TIMEOUT")
UNKNOWN, UNREACHABLE = SchedulerState("unknown"), SchedulerState("unreachable", "connection refused")


@pytest.mark.parametrize(
    ("submission", "run_json", "proc", "live", "cancelled", "expected"),
    [
        # final results are kept whatever else is said
        (SUBMISSION, run("completed", "old"), None, UNKNOWN, None, ("completed", None)),
        (SUBMISSION, run("diverged", diverged_step=12), None, RUNNING, None, ("diverged", "diverged at step 12")),
        (None, None, None, None, None, ("missing", None)),
        (None, run("failed", "old", error="x"), None, None, None, ("missing", None)),
        # cancelled after this submission: cancelled once nothing of it lives
        (
            SUBMISSION,
            run("failed", error="SIGTERM"),
            process(False),
            UNKNOWN,
            (NOW, "SIGINT"),
            ("cancelled", "cancelled by SIGINT"),
        ),
        (SUBMISSION, None, process(True), RUNNING, (NOW, "cancel"), ("running", "stopping: cancelled by cancel")),
        (SUBMISSION, None, None, PENDING, (NOW - 100, "old cancel"), ("pending", "Resources")),
        # a live process of this submission
        (SUBMISSION, run("running"), process(True), UNKNOWN, None, ("running", None)),
        # the scheduler will run it (a requeued task's failed attempt does not count)
        (SUBMISSION, run("failed", error="SIGTERM"), process(False), PENDING, None, ("pending", "Resources")),
        # a task ending, or passing through COMPLETING on its way to a requeue
        (
            SUBMISSION,
            run("failed", error="SIGTERM"),
            process(False),
            SchedulerState("running", "COMPLETING"),
            None,
            ("running", "its SLURM task is completing"),
        ),
        # this submission's process is gone
        (SUBMISSION, run("running"), process(False), RUNNING, None, ("failed", None)),
        (
            SUBMISSION,
            run("failed", error="RuntimeError: x"),
            process(False),
            RUNNING,
            None,
            ("failed", "RuntimeError: x"),
        ),
        # a requeued task runs again: its previous run's SIGTERM is history, not a failure
        (
            SUBMISSION,
            run("failed", error="terminated by SIGTERM"),
            replace(process(False), started=NOW - 60),
            SchedulerState("running", "RUNNING", since=NOW - 5),
            None,
            ("pending", "its task was requeued and is running; the run has not started yet"),
        ),
        # ... but a run that died in the task's current run (beside its pack siblings) failed
        (
            SUBMISSION,
            run("failed", error="RuntimeError: x"),
            replace(process(False), started=NOW - 3),
            SchedulerState("running", "RUNNING", since=NOW - 5),
            None,
            ("failed", "RuntimeError: x"),
        ),
        # the task runs; the run has not started (or runs on another host)
        (SUBMISSION, None, None, RUNNING, None, ("pending", "its task is running; the run has not started yet")),
        (SUBMISSION, run("running"), process(False, host="node7"), RUNNING, None, ("running", None)),
        (
            SUBMISSION,
            run("failed", "old"),
            process(True, "old"),
            RUNNING,
            None,
            ("pending", "its task is running; the run has not started yet"),
        ),
        # a local launch that is alive but has not started the run: queued behind its slots, no SLURM task
        (LOCAL, None, None, RUNNING, None, ("pending", "queued in its local launch: it starts when a slot frees")),
        # nothing can be said
        (SUBMISSION, None, None, UNREACHABLE, None, ("unknown", "scheduler not answering: connection refused")),
        # ended
        (SUBMISSION, run("failed", error="ValueError: y"), None, ENDED, None, ("failed", "ValueError: y")),
        (SUBMISSION, None, None, ENDED, None, ("failed", "its SLURM task ended TIMEOUT before the run finished")),
        (
            SUBMISSION,
            None,
            None,
            SchedulerState("ended", "CANCELLED"),
            None,
            ("cancelled", "CANCELLED by the scheduler (scancel?)"),
        ),
        (
            SUBMISSION,
            run("running"),
            None,
            SchedulerState("ended", "COMPLETED"),
            None,
            ("failed", "its SLURM task ended but the run did not finish (see its log)"),
        ),
        # nobody knows it
        (SUBMISSION, run("failed", "old", error="old error"), None, UNKNOWN, None, ("lost", None)),
        (LOCAL, None, None, UNKNOWN, None, ("lost", None)),
    ],
)
def test_run_state_table(submission, run_json, proc, live, cancelled, expected):
    state, reason = run_state(submission, run_json, proc, live, cancelled)
    assert state == expected[0]
    if expected[1] is not None:
        assert reason == expected[1]
    if state == "failed" and expected[1] is None:
        assert "is gone, and run.json does not say how it ended (killed?)" in reason
    if state == "lost":
        assert ("its launch is gone" if submission.executor == "local" else "the scheduler does not know") in reason


def test_resubmittable_states():
    assert set(RESUBMITTABLE) == {"failed", "cancelled", "lost", "missing"}


def test_a_recycled_pid_is_not_the_run_s_process():
    # This process started long after a process.json written "at time 1000" would have.
    ident = replace(processes.identity(), pid_start=1000.0)
    assert processes.alive(ident) is False
    assert processes.alive(replace(ident, host="elsewhere")) is None
    assert processes.alive(processes.identity()) is True


def test_a_process_that_exited_is_not_alive_even_unreaped():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    ident = processes.identity(child.pid)
    assert abs(ident.pid_start - time.time()) < 60 and processes.alive(ident) is True
    child.stdin.close()  # it exits; until it is waited for it is a zombie
    deadline = time.monotonic() + 30
    while processes.alive(ident) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.alive(ident) is False and processes.start_time(child.pid) is None
    child.wait()
    assert processes.alive(ident) is False


def test_a_submission_to_a_backend_not_installed_here_is_unknown_never_lost():
    ray = replace(SUBMISSION, executor="ray", handle="x1")
    live = poll_submissions([RunEntry("r", "v", (), {}, 1, (ray,))])
    assert live == {Handle("ray", "x1"): SchedulerState("unreachable", live[Handle("ray", "x1")].detail)}
    assert "no backend 'ray' is installed here" in live[Handle("ray", "x1")].detail
    state, reason = run_state(ray, None, None, live[Handle("ray", "x1")], None)
    assert state == "unknown" and "no backend 'ray'" in reason
