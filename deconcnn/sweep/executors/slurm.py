"""The SLURM executor: packs become the tasks of job arrays, submitted through submitit.

One sbatch call per chunk of at most MaxArraySize packs (submitit does not split arrays: its
#1624); submit returns once sbatch has answered. Handles are submitit's task ids (`<array>_<task>`).
poll asks squeue once for the live tasks and sacct once for the ones squeue no longer lists (sacct
lags squeue by seconds and may be absent; a task neither knows is `unknown`). sbatch's refusal is
one line (LauncherError) and leaves nothing submitted: the chunks already accepted are cancelled.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from deconcnn.sweep.executors import Executor, Pack, SchedulerState, Submission, slurm_cli
from deconcnn.sweep.executors.runner import PackJob
from deconcnn.sweep.launcher import LauncherError, submitit_kwargs

WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING"})
ACTIVE = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


def sbatch_refusal(error: BaseException) -> str:
    """The line of sbatch's stderr that says why (`sbatch: error: invalid partition specified: x`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("sbatch: error:") and "Batch job submission failed" not in line]
    return (said or [line for line in lines if "error" in line.lower()] or lines or [type(error).__name__])[0]


class SlurmExecutor(Executor):
    kind = "slurm"

    def __init__(self, folder: Path, launcher: dict[str, Any], mps: bool = False) -> None:
        self.folder, self.launcher, self.mps = Path(folder), launcher, mps
        self._logs: dict[str, str] = {}
        self._sbatch_calls = 0

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[str]:
        init, params = submitit_kwargs(self.launcher, submission.name)
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm", **init)
        try:
            executor.update_parameters(**params)
        except (ValueError, NameError) as error:  # a parameter submitit does not know (NameError in 1.5)
            raise LauncherError(f"launcher settings: {str(error).splitlines()[0]}") from None
        cpus = params.get("cpus_per_task")
        chunk_size = slurm_cli.max_array_size()
        handles: list[str] = []
        for start in range(0, len(packs), chunk_size):
            chunk = packs[start : start + chunk_size]
            try:
                # submitit prints sbatch's stderr itself before raising: it is said once, below.
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    jobs = [
                        executor.submit(
                            PackJob(list(pack), submission, self.mps, max(1, cpus // len(pack)) if cpus else None)
                        )
                        for pack in chunk
                    ]
            except (FailedJobError, FailedSubmissionError) as error:
                if handles:
                    slurm_cli.scancel(*handles)
                raise LauncherError(sbatch_refusal(error)) from None
            self._sbatch_calls += 1
            for job in jobs:
                handles.append(job.job_id)
                self._logs[job.job_id] = str(job.paths.stdout)
        return handles

    def poll(self, handles: Sequence[str]) -> dict[str, SchedulerState]:
        return poll_handles(handles)

    def cancel(self, handles: Sequence[str]) -> None:
        if handles:
            slurm_cli.scancel(*handles)

    def describe(self, handles: Sequence[str]) -> dict[str, Any]:
        return {"array_job_ids": sorted({h.split("_")[0] for h in handles}), "sbatch_calls": self._sbatch_calls}

    def log_of(self, handle: str) -> str | None:
        return self._logs.get(handle)


def poll_handles(handles: Sequence[str]) -> dict[str, SchedulerState]:
    """One squeue call for the live tasks, one sacct call for the rest (module doc)."""
    try:
        live = slurm_cli.squeue_states(handles)
    except slurm_cli.SlurmError as error:
        return dict.fromkeys(handles, SchedulerState("unreachable", str(error).splitlines()[0]))
    gone = [h for h in handles if h not in live]
    try:
        accounted = slurm_cli.sacct_states(gone) if gone else {}
    except slurm_cli.SlurmError:  # no accounting: the run's own files tell how it ended
        accounted = {}
    out = {}
    for handle in handles:
        if handle in live:
            state, reason, started = live[handle]
            out[handle] = (
                SchedulerState("pending", reason) if state in WAITING else SchedulerState("running", state, started)
            )
        elif handle in accounted:
            state = accounted[handle]
            out[handle] = (
                SchedulerState("pending", state)
                if state in WAITING
                else SchedulerState("running", state)
                if state in ACTIVE  # sacct lags squeue
                else SchedulerState("ended", state)
            )
        else:
            out[handle] = SchedulerState("unknown")
    return out
