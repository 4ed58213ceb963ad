"""The SLURM executor: packs become the tasks of job arrays, submitted through submitit.

One sbatch call per chunk of at most MaxArraySize packs (submitit does not split arrays: its
#1624); submit returns once sbatch has answered. Given a journal (deconcnn.sweep.journal), the
arrays are written down before the first sbatch and each job id as soon as sbatch answers, each
array named after the submission, so a launch killed at any point leaves a record of what it
queued. `room` says how many tasks the site's limits (MaxSubmitJobs, MaxJobCount) let this user
queue now. Handles are submitit's task ids (`<array>_<task>`).
poll asks squeue once for the live tasks and sacct once for the ones squeue no longer lists (sacct
lags squeue by seconds and may be absent; a task neither knows is `unknown`); both are asked by
array job id, so a sweep of 50,000 tasks in 50 arrays is two short commands. sbatch's refusal is
one line (LauncherError) and leaves nothing submitted: the arrays already accepted are cancelled
(by array job id). A refusal for a job limit after some arrays were accepted keeps them: submit
returns their handles (fewer than the packs) and `stopped_by` says why.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconcnn.sweep.executors import Executor, Pack, SchedulerState, Submission, slurm_cli
from deconcnn.sweep.journal import Journal, array_name

if TYPE_CHECKING:
    import submitit

# submitit, the pack runner and the launcher settings (Hydra) are imported where a job is submitted: `status` only
# polls, and at 50,000 runs it has a fraction of a second for its imports.

WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING"})
ACTIVE = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


#: sbatch's words when a job limit refuses an array (MaxSubmitJobs of an association or QOS,
#: MaxJobCount of the controller): the arrays accepted before it are a wave worth keeping.
LIMIT_REFUSALS = ("MaxSubmitJob", "job submit limit", "temporarily unable to accept job")


def task_log(folder: Path, handle: str) -> str:
    """Where submitit has an array task write its stdout."""
    from submitit.core.utils import JobPaths

    return str(JobPaths(folder, job_id=handle, task_id=0).stdout)


def array_folder(folder: Path, submission: Submission, index: int) -> Path:
    """submitit's folder for a submission's `index`-th array: its script and its tasks' logs and
    pickles, so no directory holds more than MaxArraySize tasks' files (a flat one held 4 files per
    task: 200,000 at 50,000 runs). Named before sbatch, so submitit makes it before a task starts;
    sweeps launched before kept everything in `folder` itself (their manifests name those logs)."""
    return folder / f"{submission.id}-{index}"


def sbatch_refusal(error: BaseException) -> str:
    """The line of sbatch's stderr that says why (`sbatch: error: invalid partition specified: x`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("sbatch: error:") and "Batch job submission failed" not in line]
    return (said or [line for line in lines if "error" in line.lower()] or lines or [type(error).__name__])[0]


class SlurmExecutor(Executor):
    kind = "slurm"

    def __init__(
        self, folder: Path, launcher: dict[str, Any], mps: bool = False, journal: Journal | None = None
    ) -> None:
        self.folder, self.launcher, self.mps, self.journal = Path(folder), launcher, mps, journal
        self._sbatch_calls = 0
        self._folders: dict[str, Path] = {}  # array job id -> its array_folder
        self._limits: slurm_cli.JobLimits | None = None
        self.stopped_by: str | None = None  # the job limit that refused the arrays not submitted

    def limits(self) -> slurm_cli.JobLimits:
        if self._limits is None:
            self._limits = slurm_cli.job_limits(self.launcher.get("qos"))
        return self._limits

    def room(self) -> tuple[int | None, str]:
        return self.limits().room()

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[str]:
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        from deconcnn.sweep.executors.runner import PackJob
        from deconcnn.sweep.launcher import LauncherError, submitit_kwargs

        init, params = submitit_kwargs(self.launcher, submission.name)

        def executor_in(folder: Path) -> submitit.AutoExecutor:
            executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
            try:
                executor.update_parameters(**params)
            except (ValueError, NameError) as error:  # a parameter submitit does not know (NameError in 1.5)
                raise LauncherError(f"launcher settings: {str(error).splitlines()[0]}") from None
            return executor

        executor_in(self.folder)  # refuses unknown settings before anything is journaled
        cpus = params.get("cpus_per_task")
        size = self.limits().max_array_size
        arrays = [packs[start : start + size] for start in range(0, len(packs), size)]
        if self.journal:
            self.journal.begin([[[c.name for c in pack] for pack in array] for array in arrays])
        handles: list[str] = []
        for index, array in enumerate(arrays):
            folder = array_folder(self.folder, submission, index)
            executor = executor_in(folder)
            executor.update_parameters(name=array_name(submission, index))
            try:
                # submitit prints sbatch's stderr itself before raising: it is said once, below.
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    jobs = [
                        executor.submit(
                            PackJob(list(pack), submission, self.mps, max(1, cpus // len(pack)) if cpus else None)
                        )
                        for pack in array
                    ]
            except (FailedJobError, FailedSubmissionError) as error:
                refusal = sbatch_refusal(error)
                if handles and any(words in str(error) for words in LIMIT_REFUSALS):
                    self.stopped_by = refusal
                    return handles
                if handles:
                    try:
                        slurm_cli.scancel(*slurm_cli.array_ids(handles))
                    except slurm_cli.SlurmError as cancel_error:  # the journal keeps them for the next launch
                        raise LauncherError(
                            f"{refusal}; cancelling the arrays accepted before it failed ({cancel_error}): "
                            "the next launch of this sweep records them"
                        ) from None
                if self.journal:
                    self.journal.finish()
                raise LauncherError(refusal) from None
            self._sbatch_calls += 1
            array_id = slurm_cli.array_ids(job.job_id for job in jobs)[0]
            self._folders[array_id] = folder
            if self.journal:
                self.journal.accepted(index, array_id)
            handles.extend(job.job_id for job in jobs)
        return handles

    def poll(self, handles: Sequence[str]) -> dict[str, SchedulerState]:
        return poll_handles(handles)

    def cancel(self, handles: Sequence[str]) -> None:
        if handles:
            slurm_cli.scancel(*handles)

    def describe(self, handles: Sequence[str]) -> dict[str, Any]:
        return {"array_job_ids": slurm_cli.array_ids(handles), "sbatch_calls": self._sbatch_calls}

    def log_of(self, handle: str) -> str | None:
        return task_log(self._folders.get(slurm_cli.array_ids([handle])[0], self.folder), handle)


def poll_handles(handles: Sequence[str]) -> dict[str, SchedulerState]:
    """One squeue call for the live tasks, one sacct call for the rest (module doc)."""
    try:
        live = slurm_cli.squeue_states(handles)
    except slurm_cli.SlurmError as error:
        return dict.fromkeys(handles, SchedulerState("unreachable", str(error).splitlines()[0]))
    gone = [h for h in handles if h not in live]
    try:
        accounted = slurm_cli.sacct_states(slurm_cli.array_ids(gone)) if gone else {}
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
