"""What runs a pack, wherever it runs: inside a SLURM array task (PackJob) or a local pool slot.

Each command is its own process in its own session (so a signal for one run reaches all of its
children and none of its siblings), with its stdout and stderr appended, unbuffered, to
`<workdir>/stdout.log`; on a CPU it is forked from a server with the training stack imported
(deconcnn.backends.preloaded). Before starting it the runner writes `<workdir>/process.json` (host, pid,
process start time, submission id), which is how `status` tells a live run from a dead one.

Runs already completed or diverged are skipped, so a requeued pack only resumes what is left, and
runs cancelled after this submission (cancel.jsonl) are never started, or are stopped: SIGTERM to
their process group, SIGKILL after STOP_GRACE_S.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from deconcnn.backends import preloaded, processes
from deconcnn.backends.base import STOP_GRACE_S
from deconcnn.backends.pack import Command, Submission
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.layout import read_cancellations
from deconcnn.runlog.run_status import KEEP_STATUSES, PROCESS_FILE, RUN_LOG, SUBMISSION_ENV, read_checked_status

CHECK_EVERY_S = 1.0


def is_kept(workdir: str | Path) -> bool:
    status = read_checked_status(Path(workdir))  # a completed run whose log was lost since runs again
    return status is not None and status.status in KEEP_STATUSES


def cancelled_since(submission: Submission) -> Callable[[], set[str]]:
    """The names cancelled after this submission, read from the sweep's cancel.jsonl."""
    if submission.cancel_file is None:
        return set
    sweep_dir = Path(submission.cancel_file).parent
    return lambda: {
        name for name, (when, _) in read_cancellations(sweep_dir).items() if when >= submission.submitted_at
    }


def run_pack(
    commands: Sequence[Command],
    submission: Submission,
    *,
    threads_per_run: int | None = None,
    extra_env: dict[str, str] | None = None,
    stop: threading.Event | None = None,
    grace_s: float = STOP_GRACE_S,
) -> dict[str, int]:
    """Run the pack's commands concurrently; wait for all; return the exit codes of those started.
    `stop` (set by a local launch being interrupted) stops them all."""
    env = {**os.environ, **(extra_env or {}), SUBMISSION_ENV: submission.id, "PYTHONUNBUFFERED": "1"}
    if threads_per_run:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads_per_run)
    cancelled = cancelled_since(submission)
    stopped = cancelled()
    procs: dict[str, subprocess.Popen[bytes] | preloaded.ForkedRun] = {}
    for command in commands:
        workdir = Path(command.workdir)
        if workdir.is_symlink():  # linked after launch refused links: the run would write where it points
            print(f"deconcnn: {command.name}: not started: {workdir} is a symbolic link", file=sys.stderr, flush=True)
            continue
        if is_kept(command.workdir) or command.name in stopped or (stop is not None and stop.is_set()):
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        proc = procs[command.name] = preloaded.start_process(command, env, workdir / RUN_LOG)
        # Says "a new attempt started" before the run itself can rewrite run.json (start-up takes
        # seconds), so status does not read a requeued run's previous failure as final.
        write_json_atomic(
            workdir / PROCESS_FILE,
            replace(processes.identity(proc.pid), started=time.time(), submission_id=submission.id).to_json(),
        )
    stopping: dict[str, threading.Thread] = {}
    while any(p.poll() is None for p in procs.values()):
        wanted = set(procs) if stop is not None and stop.is_set() else cancelled() & set(procs)
        for name in wanted - set(stopping):
            if procs[name].poll() is None:
                stopping[name] = threading.Thread(
                    target=processes.stop_group, args=(procs[name].pid, grace_s), daemon=True
                )
                stopping[name].start()
        time.sleep(CHECK_EVERY_S if not stopping else 0.1)
    return {name: proc.wait() for name, proc in procs.items()}


class MpsDaemon:
    """A CUDA MPS control daemon private to one job, so k packed runs share the GPU's SMs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="deconcnn-mps-"))
        self.env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log"),
        }

    def __enter__(self) -> dict[str, str]:
        if shutil.which("nvidia-cuda-mps-control") is None:
            raise RuntimeError("--mps: nvidia-cuda-mps-control is not on PATH on this node")
        for directory in self.env.values():
            Path(directory).mkdir(parents=True)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **self.env}, check=True)
        return self.env

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env={**os.environ, **self.env}, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PackJob(Checkpointable):
    """What one SLURM array task runs. Checkpointable: on preemption or timeout (submitit's USR2
    handler) the task is requeued as is, and each unfinished run resumes from its checkpoint. This
    is the only requeue handler: deconcnn-train switches Lightning's off."""

    commands: list[Command]
    submission: Submission
    mps: bool = False
    threads_per_run: int | None = None

    def __call__(self) -> dict[str, int]:
        if self.mps:
            with MpsDaemon() as mps_env:
                return run_pack(self.commands, self.submission, threads_per_run=self.threads_per_run, extra_env=mps_env)
        return run_pack(self.commands, self.submission, threads_per_run=self.threads_per_run)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(PackJob(self.commands, self.submission, self.mps, self.threads_per_run))
