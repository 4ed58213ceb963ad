"""The SLURM backend: packs become the tasks of job arrays, submitted through submitit.

One sbatch call per chunk of at most MaxArraySize packs (submitit does not split arrays: its
#1624); submit returns once sbatch has answered. Given a journal (deconcnn.backends.journal), the
arrays are written down before the first sbatch and each job id as soon as sbatch answers, each
array named after the submission, so a launch killed at any point leaves a record of what it
queued. `room` says how many tasks the site's limits (MaxSubmitJobs, MaxJobCount) let this user
queue now. Handles are submitit's task ids (`<array>_<task>`).
poll asks squeue once for the live tasks and sacct once for the ones squeue no longer lists (sacct
lags squeue by seconds and may be absent; a task neither knows is `unknown`); squeue is asked by
array job id, sacct by task id where those fit one command (else by array id), so a sweep of
50,000 tasks in 50 arrays is two short commands. sbatch's refusal is
one line (LauncherError) and leaves nothing submitted: the arrays already accepted are cancelled
(by array job id). A refusal for a job limit after some arrays were accepted keeps them: submit
returns their handles (fewer than the packs) and `stopped_by` says why.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconcnn.backends.base import STOP_GRACE_S, Backend, BackendError, Handle, RecordPacks, SchedulerState
from deconcnn.backends.journal import Journal, array_name, read_journal
from deconcnn.backends.pack import Pack, Submission
from deconcnn.backends.slurm import cli as slurm_cli
from deconcnn.runlog.records import LaunchRecord, Manifest

if TYPE_CHECKING:
    import submitit

# submitit, the pack runner and the launcher settings (Hydra) are imported where a job is submitted:
# `status` only polls, and at 50,000 runs it has a fraction of a second for its imports.

KIND = "slurm"

WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING"})
ACTIVE = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


#: sbatch's words when a job limit refuses an array (MaxSubmitJobs of an association or QOS,
#: MaxJobCount of the controller): the arrays accepted before it are a wave worth keeping.
LIMIT_REFUSALS = ("MaxSubmitJob", "job submit limit", "temporarily unable to accept job")


def task_log(folder: Path, handle: Handle) -> str:
    """Where submitit has an array task write its stdout."""
    from submitit.core.utils import JobPaths

    return str(JobPaths(folder, job_id=handle.id, task_id=0).stdout)


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


class SlurmBackend(Backend):
    kind = KIND
    detached = True
    auto_priority = 10  # where a controller answers, `auto` is SLURM
    #: each refresh asks squeue and sacct, a load on the cluster's database (submitit #1759)
    watch_min_s = 30.0
    plan_where = "SLURM, arrays of <= MaxArraySize tasks"

    def __init__(
        self, folder: Path, launcher: dict[str, Any], mps: bool = False, journal: Journal | None = None
    ) -> None:
        self.folder, self.launcher, self.mps, self.journal = Path(folder), launcher, mps, journal
        self._sbatch_calls = 0
        self._folders: dict[str, Path] = {}  # array job id -> its array_folder
        self._limits: slurm_cli.JobLimits | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        return None if slurm_cli.slurm_available() else "no SLURM controller answers here (sbatch/scontrol ping)"

    @classmethod
    def settings(cls, run_overrides: Sequence[str], launcher_overrides: Sequence[str]) -> dict[str, Any]:
        from deconcnn.backends.slurm import settings as slurm_settings

        return slurm_settings.compose_launcher(run_overrides, launcher_overrides)

    @classmethod
    def check_feasible(cls, settings: dict[str, Any]) -> None:
        from deconcnn.backends.slurm import settings as slurm_settings

        slurm_settings.check_feasible(settings)

    @classmethod
    def single_gpu(cls, settings: dict[str, Any]) -> dict[str, Any]:
        return {**settings, "gpus_per_node": min(1, cls.plan_gpus(settings))}

    @classmethod
    def plan_gpus(cls, settings: dict[str, Any]) -> int:
        return int(settings.get("gpus_per_node") or 0)

    @classmethod
    def create(
        cls,
        folder: Path,
        settings: dict[str, Any],
        *,
        slots: int = 1,
        mps: bool = False,
        grace_s: float = STOP_GRACE_S,
        journal: Journal | None = None,
    ) -> SlurmBackend:
        """The scheduler decides how many tasks run at once (`slots` is not used); a run stopped
        inside a task gets the pack runner's STOP_GRACE_S."""
        return cls(folder, settings, mps=mps, journal=journal)

    @classmethod
    def attach(cls, handle: Handle) -> SlurmBackend:
        """Polls and scancels by task id; submits nothing (it has no settings)."""
        return cls(Path(), {})

    @classmethod
    def recover(
        cls,
        journal: Path,
        folder: Path,
        manifest: Manifest,
        record_packs: RecordPacks,
        write_manifest: Callable[[Manifest], None],
    ) -> str | None:
        backend = cls(folder, {})  # its tasks' logs are under `folder`
        try:
            return reconcile(
                journal,
                manifest,
                lambda record, sub, packs: record_packs(manifest, record, sub, packs, backend),
                write_manifest,
                backend,
            )
        except slurm_cli.SlurmError as error:
            raise BackendError(
                f"an interrupted launch left {journal}, and SLURM cannot say what it queued "
                f"({error}); launch again once the scheduler answers"
            ) from None

    @property
    def gpus_per_pack(self) -> int:
        return self.plan_gpus(self.launcher)

    def limits(self) -> slurm_cli.JobLimits:
        if self._limits is None:
            self._limits = slurm_cli.job_limits(self.launcher.get("qos"))
        return self._limits

    def room(self) -> tuple[int | None, str]:
        return self.limits().room()

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[Handle]:
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        from deconcnn.backends.runner import PackJob
        from deconcnn.backends.slurm.settings import LauncherError, submitit_kwargs

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
        handles: list[Handle] = []
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
                        slurm_cli.scancel(*slurm_cli.array_ids(h.id for h in handles))
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
            self.keep_logs_in(array_id, folder)
            if self.journal:
                self.journal.accepted(index, array_id)
            handles.extend(Handle(KIND, job.job_id) for job in jobs)
        return handles

    def poll(self, handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
        return poll_handles(handles)

    def cancel(self, handles: Sequence[Handle]) -> None:
        if handles:
            slurm_cli.scancel(*(h.id for h in handles))

    def describe(self, handles: Sequence[Handle]) -> dict[str, Any]:
        return {"array_job_ids": slurm_cli.array_ids(h.id for h in handles), "sbatch_calls": self._sbatch_calls}

    def keep_logs_in(self, array_id: str, folder: Path) -> None:
        """log_of finds the logs of this array's tasks in `folder` (its array_folder)."""
        self._folders[array_id] = folder

    def log_of(self, handle: Handle) -> str | None:
        return task_log(self._folders.get(slurm_cli.array_ids([handle.id])[0], self.folder), handle)

    def where(self, handle: Handle) -> str:
        return f"SLURM job {handle.id}"


def poll_handles(handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
    """One squeue call for the live tasks, one sacct call for the rest (module doc)."""
    ids = [h.id for h in handles]
    try:
        live = slurm_cli.squeue_states(ids)
    except slurm_cli.SlurmError as error:
        return dict.fromkeys(handles, SchedulerState("unreachable", str(error).splitlines()[0]))
    gone = [i for i in ids if i not in live]
    # sacct by task where the tasks fit one call (a finished sweep's failed runs: sacct then reads
    # 2,500 tasks' records, not every task of their arrays), else by array (few calls at any size).
    asked = gone if len(slurm_cli.id_chunks(gone)) == 1 else slurm_cli.array_ids(gone)
    try:
        accounted = slurm_cli.sacct_states(asked) if gone else {}
    except slurm_cli.SlurmError:  # no accounting: the run's own files tell how it ended
        accounted = {}
    out = {}
    by_state: dict[str, SchedulerState] = {}  # one (frozen) answer per sacct state: 50,000 tasks share a few
    for handle in handles:
        if handle.id in live:
            state, reason, started = live[handle.id]
            out[handle] = (
                SchedulerState("pending", reason) if state in WAITING else SchedulerState("running", state, started)
            )
        elif handle.id in accounted:
            state = accounted[handle.id]
            if state not in by_state:
                by_state[state] = (
                    SchedulerState("pending", state)
                    if state in WAITING
                    else SchedulerState("running", state)
                    if state in ACTIVE  # sacct lags squeue
                    else SchedulerState("ended", state)
                )
            out[handle] = by_state[state]
        else:
            out[handle] = SchedulerState("unknown")
    return out


def reconcile(
    path: Path,
    manifest: Manifest,
    record_packs: Callable[[LaunchRecord, Submission, list[tuple[Handle, list[str]]]], Manifest],
    write_manifest: Callable[[Manifest], None],
    backend: SlurmBackend,
) -> str | None:
    """Record in `manifest` what an interrupted launch's journal says was queued (deconcnn.backends.journal), write
    it, then remove the journal; returns a line saying so, None when there was nothing to do.
    `record_packs(record, submission, [(handle, run ids)])` returns the manifest with a submission
    added, as a launch adds it. Raises SlurmError when the scheduler cannot say which arrays exist: the journal
    then stays for the next launch."""
    journal = read_journal(path)
    if journal is None:
        path.unlink(missing_ok=True)
        return None
    plan, accepted = journal
    submission = Submission(**plan["submission"])
    if manifest.recorded(submission.id):
        path.unlink()
        return None
    unknown = [a["name"] for i, a in enumerate(plan["arrays"]) if i not in accepted]
    if unknown:
        found = slurm_cli.jobs_named(unknown, submission.submitted_at)
        for i, array in enumerate(plan["arrays"]):
            jobs = found.get(array["name"], [])
            if i not in accepted and jobs:
                accepted[i] = jobs[0]
                if jobs[1:]:  # each name is sbatch'ed once; a duplicate would run the same packs twice
                    slurm_cli.scancel(*jobs[1:])
    for i, job in accepted.items():  # the array's own folder, or slurm/ itself for an older launch's journal
        folder = array_folder(backend.folder, submission, i)
        if folder.is_dir():
            backend.keep_logs_in(job, folder)
    packs = [
        # submitit submits a batch of one pack as a plain job, not an array of one task
        (Handle(KIND, f"{accepted[i]}_{task}" if len(array["packs"]) > 1 else accepted[i]), runs)
        for i, array in enumerate(plan["arrays"])
        if i in accepted
        for task, runs in enumerate(array["packs"])
    ]
    arrays = sorted(set(accepted.values()), key=lambda j: (len(j), j))
    if packs:
        planned = LaunchRecord.from_json(plan["record"])
        record = replace(
            planned,
            runs=tuple(run for _, runs in packs for run in runs),
            described={**planned.described, "array_job_ids": arrays},
            recovered="from the journal of an interrupted launch",
        )
        write_manifest(record_packs(record, submission, packs))
    path.unlink()
    listed = ", ".join(arrays) or "none"
    return (
        f"an interrupted launch ({submission.id}) was reconciled from its journal: {len(packs)} tasks "
        f"of {sum(len(a['packs']) for a in plan['arrays'])} were queued and are now recorded (arrays {listed})"
    )
