"""Thin, typed wrappers around the SLURM command-line tools used by the sweep layer.

No torch (nor any other heavy) import here: the sweep layer must start fast. Every command runs
with a timeout; a failing command raises :class:`SlurmError` carrying its stderr. Lists of job ids
are passed ARG_BYTES at a time (`id_chunks`): Linux refuses one argument over 128 KiB, which
10,500 array task ids pass.

Functions:
    slurm_available()          -> bool: sbatch/squeue on PATH and `scontrol ping` says UP
    max_array_size()           -> int: MaxArraySize from one `scontrol show config`
    job_limits(qos)            -> JobLimits: MaxArraySize, MaxJobCount, MaxSubmitJobs and the queue now
    jobs_named(names, since)   -> {job name: [array job ids]} from squeue and sacct
    array_ids(handles)         -> the array job ids of array tasks ('123_4' -> '123'), sorted
    squeue_states(job_ids)     -> {task id: QueueEntry(state, reason, started)}, one squeue call
    sacct_states(job_ids)      -> {job id: normalised state}, one sacct call
    partition_nodes(partition) -> [NodeResources] of the partition (default partition if None)
    scancel(*job_ids)          -> None, one scancel call
    requeue(job_id)            -> None: requeue and make it eligible to start at once
("one call": one per ARG_BYTES of ids.)
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ARG_BYTES",
    "JobLimits",
    "NodeResources",
    "QueueEntry",
    "SlurmError",
    "array_ids",
    "expand_array_id",
    "id_chunks",
    "job_limits",
    "jobs_named",
    "max_array_size",
    "normalise_state",
    "partition_nodes",
    "requeue",
    "sacct_states",
    "scancel",
    "slurm_available",
    "squeue_states",
]

#: Seconds any one SLURM command may take before it is treated as failed.
DEFAULT_TIMEOUT_S = 30.0
#: Bytes of job ids one command gets, joined or as separate arguments: a quarter of Linux's cap on
#: one argument (MAX_ARG_STRLEN, 128 KiB), so ids, options and the environment stay far below
#: ARG_MAX too. 32 KiB is ~2,700 array task ids.
ARG_BYTES = 32 * 1024


def id_chunks(ids: Iterable[str], budget: int | None = None) -> list[list[str]]:
    """`ids` in order, cut into lists whose comma-joined text stays within `budget` (ARG_BYTES) bytes."""
    budget = budget or ARG_BYTES
    chunks: list[list[str]] = []
    size = budget + 1
    for job_id in ids:
        if size + 1 + len(job_id) > budget:
            chunks.append([])
            size = -1
        chunks[-1].append(job_id)
        size += 1 + len(job_id)
    return chunks


def array_ids(handles: Iterable[str]) -> list[str]:
    """The array job ids of array tasks, once each (`'123_4'` -> `'123'`; a plain job id stays)."""
    return sorted({str(h).split("_", 1)[0] for h in handles}, key=lambda j: (len(j), j))


class SlurmError(RuntimeError):
    """A SLURM command failed (non-zero exit, timeout, missing binary or unparsable output)."""

    def __init__(self, cmd: Sequence[str], message: str, returncode: int | None = None) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = message
        where = f" (exit {returncode})" if returncode is not None else ""
        detail = message.strip() or "(no stderr)"
        super().__init__(f"`{' '.join(self.cmd)}` failed{where}: {detail}")


def _run(cmd: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run ``cmd``; return its stdout, or raise SlurmError with its stderr."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise SlurmError(cmd, f"command not found: {exc.filename or cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr or ""
        stderr = err.decode(errors="replace") if isinstance(err, bytes) else err
        raise SlurmError(cmd, f"timed out after {timeout:g}s. {stderr}") from exc
    if proc.returncode != 0:
        raise SlurmError(cmd, proc.stderr, proc.returncode)
    return proc.stdout


def slurm_available(timeout: float = 10.0) -> bool:
    """True when sbatch and squeue are on PATH and the controller answers ``scontrol ping``."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return False
    try:
        out = _run(["scontrol", "ping"], timeout=timeout)
    except SlurmError:
        return False
    return " is UP" in out


def _config_value(out: str, key: str) -> int | None:
    m = re.search(rf"^\s*{key}\s*=\s*(\d+)\s*$", out, re.MULTILINE)
    return int(m.group(1)) if m else None


def max_array_size() -> int:
    """The controller's MaxArraySize (array indices must be < this value)."""
    cmd = ["scontrol", "show", "config"]
    value = _config_value(_run(cmd), "MaxArraySize")
    if value is None:
        raise SlurmError(cmd, "no MaxArraySize line in the output")
    return value


@dataclass(frozen=True)
class JobLimits:
    """What the site lets one user queue, and what is queued now. Every array task is a job for
    MaxSubmitJobs and MaxJobCount."""

    max_array_size: int
    max_job_count: int | None  # jobs the controller holds at once, all users (slurm.conf MaxJobCount)
    max_submit: int | None  # the smallest MaxSubmitJobs of the user's associations and QOS; None: none set
    submit_limit: str  # which limit max_submit is, for messages
    queued_mine: int  # this user's pending and running jobs, array tasks counted one by one
    queued_all: int

    def room(self) -> tuple[int | None, str]:
        """(jobs this user may queue now, the limit that says so); (None, '') when nothing limits."""
        rooms = []
        if self.max_submit is not None:
            rooms.append(
                (
                    self.max_submit - self.queued_mine,
                    f"{self.submit_limit}={self.max_submit}, {self.queued_mine} of your jobs queued",
                )
            )
        if self.max_job_count is not None:
            rooms.append(
                (
                    self.max_job_count - self.queued_all,
                    f"MaxJobCount={self.max_job_count}, {self.queued_all} jobs queued on the cluster",
                )
            )
        if not rooms:
            return None, ""
        free, why = min(rooms)
        return max(0, free), why


def _sacctmgr(*args: str) -> list[list[str]]:
    """Rows of a parsable sacctmgr listing; none when accounting is absent (no limits to read)."""
    try:
        out = _run(["sacctmgr", "--noheader", "--parsable2", "list", *args])
    except SlurmError:
        return []
    return [line.split("|") for line in out.splitlines() if line.strip()]


def job_limits(qos: str | None = None) -> JobLimits:
    """The limits a submission must fit (as scalableminds/cluster_tools reads them): MaxArraySize
    and MaxJobCount from `scontrol show config`, MaxSubmitJobs of the user's associations and
    MaxSubmitJobsPerUser of the QOS the job gets (`qos`, else the associations' default or their
    QOS) from sacctmgr, and the queue from one squeue call; the jobs slurmctld counts against the
    user's MaxSubmitJobs from `scontrol show assoc_mgr`, where it is set. Five commands.

    The user's queued jobs are the larger of squeue's count and slurmctld's own: sbatch is checked
    against the latter, which can stay above the queue (seen here on SLURM 22.05 after requeues
    and a slurmctld restart: 2 counted, none queued)."""
    import getpass

    cmd = ["scontrol", "show", "config"]
    config = _run(cmd)
    array_size = _config_value(config, "MaxArraySize")
    if array_size is None:
        raise SlurmError(cmd, "no MaxArraySize line in the output")
    user = getpass.getuser()
    limits: list[tuple[int, str]] = []
    qos_names: set[str] = {qos} if qos else set()
    for row in _sacctmgr("user", user, "withassoc", "format=MaxSubmitJobs,QOS,DefaultQOS"):
        if len(row) >= 3:
            if row[0].strip().isdigit():
                limits.append((int(row[0]), "MaxSubmitJobs (your association)"))
            if not qos:
                qos_names |= {row[2].strip()} if row[2].strip() else {q for q in row[1].split(",") if q.strip()}
    for row in _sacctmgr("qos", "format=Name,MaxSubmitJobsPerUser"):
        if len(row) >= 2 and row[0] in qos_names and row[1].strip().isdigit():
            limits.append((int(row[1]), f"MaxSubmitJobsPerUser (QOS {row[0]})"))
    queue = _run(["squeue", "--noheader", "--array", "--format=%u"]).split()
    max_submit, which = min(limits) if limits else (None, "")
    mine = max(queue.count(user), _counted_submits(user)) if max_submit is not None else queue.count(user)
    return JobLimits(array_size, _config_value(config, "MaxJobCount"), max_submit, which, mine, len(queue))


_COUNTED = re.compile(r"\bMaxSubmitJobs=\d+\((\d+)\)")


def _counted_submits(user: str) -> int:
    """The jobs slurmctld counts against the user's association's MaxSubmitJobs (`MaxSubmitJobs=4(2)`:
    2 counted); 0 when it says nothing (no limit set on the user's association, no assoc_mgr)."""
    try:
        text = _run(["scontrol", "show", "assoc_mgr", f"users={user}", "flags=assoc"])
    except SlurmError:
        return 0
    mine = False
    counted = 0
    for line in text.splitlines():
        if "UserName=" in line:  # a new association: the user's own, or an account's
            mine = f"UserName={user}(" in line
        elif mine and (match := _COUNTED.search(line)):
            counted = max(counted, int(match.group(1)))
    return counted


def jobs_named(names: Sequence[str], since: float) -> dict[str, list[str]]:
    """The array job ids of the jobs with these names submitted since `since` (epoch seconds), queued
    (squeue) or ended (sacct): how a launch killed before it wrote sbatch's answer down finds its jobs."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for chunk in id_chunks(names):
        for line in _run(["squeue", "--noheader", "--format=%F|%j", "--name", ",".join(chunk)]).splitlines():
            job, _, name = line.strip().partition("|")
            if name in found:
                found[name].add(job)
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
        cmd = ["sacct", "--noheader", "--parsable2", "-X", "--format=JobID,JobName", "--starttime", start]
        with contextlib.suppress(SlurmError):  # no accounting: squeue's answer is all there is
            for line in _run([*cmd, "--name", ",".join(chunk)]).splitlines():
                job, _, name = line.strip().partition("|")
                if name in found:
                    found[name].add(job.split("_", 1)[0])
    return {name: sorted(jobs) for name, jobs in found.items()}


def normalise_state(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED', 'RUNNING+' -> 'RUNNING'; always upper case."""
    words = state.strip().split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


_ARRAY_RANGE = re.compile(r"^(?P<job>\d+)_\[(?P<spec>[^\]]*)\]$")


def expand_array_id(job_id: str) -> list[str]:
    """Expand a sacct/squeue array record id into one id per task.

    ``'123_[0-2,5%2]'`` -> ``['123_0', '123_1', '123_2', '123_5']``; any other id is returned
    unchanged in a one-element list (``'123_4'``, ``'123'``).
    """
    m = _ARRAY_RANGE.match(job_id) if "[" in job_id else None  # sacct prints 50,000 plain task ids
    if m is None:
        return [job_id]
    spec = m.group("spec").split("%", 1)[0]  # drop the throttle ("%k")
    out: list[str] = []
    for part in filter(None, spec.split(",")):
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        if "-" in part:
            lo_s, hi_s = part.split("-", 1)
            out.extend(f"{m.group('job')}_{i}" for i in range(int(lo_s), int(hi_s) + 1, step))
        else:
            out.append(f"{m.group('job')}_{int(part)}")
    return out


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """States of jobs and array tasks from ONE ``sacct`` call (per ARG_BYTES of ids).

    ``job_ids`` may hold plain job ids (``'123'``), array job ids (``'123'`` stands for all its
    tasks) and array task ids (``'123_4'``). The result maps every job or array task that sacct
    reports to its normalised state (``'CANCELLED by 0'`` -> ``'CANCELLED'``); array tasks are keyed
    ``'<job>_<task>'``, and a not yet started range ``'123_[2-5]'`` is expanded to one key per
    task. Keys are the ids as sacct prints them: asking for an array task by its raw job id
    (``'125'`` for task ``'123_2'``) gives the key ``'123_2'``. An id that sacct does not know yet
    (it lags squeue by a few seconds) is absent.

    Not submitit's SlurmInfoWatcher: its sacct call has no timeout (a slow slurmdbd would hang
    `status`), it caches per watcher object (status is a fresh process each refresh) and its
    `read_job_id` drops a pending range with a step (`123_[0-6:3]`), whose tasks would then read as
    lost; squeue's ids need the same expansion (`expand_array_id`).
    """
    states: dict[str, str] = {}
    for ids in id_chunks(dict.fromkeys(str(j) for j in job_ids)):
        cmd = ["sacct", "--parsable2", "--noheader", "-X", "--format=JobID,State", "--jobs", ",".join(ids)]
        for line in _run(cmd).splitlines():
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) < 2:
                raise SlurmError(cmd, f"unparsable sacct line {line!r}")
            for task_id in expand_array_id(fields[0].strip()):
                states[task_id] = normalise_state(fields[1])
    return states


class QueueEntry(NamedTuple):
    state: str
    reason: str
    #: squeue's StartTime in epoch seconds (whole seconds), None for N/A: when the current run of a
    #: running task began (a requeued task's is later than its previous run's), or the expected
    #: start of a pending one.
    started: float | None


def squeue_states(job_ids: Iterable[str]) -> dict[str, QueueEntry]:
    """The queue entry of every live job or array task among ``job_ids``, from ONE squeue call
    (per ARG_BYTES of array ids).

    Array tasks still pending as a range (``'123_[2-5]'``) are expanded; a job squeue does not list
    has ended (or was never known). Array job ids (``'123'``) stand for all their tasks.
    """
    states: dict[str, QueueEntry] = {}
    for arrays in id_chunks(array_ids(job_ids)):
        states.update(_squeue(arrays))
    return states


def _squeue(arrays: list[str]) -> dict[str, QueueEntry]:
    # --states=all would list recently ended jobs too; the default lists pending and running ones.
    try:
        out = _run(["squeue", "--array", "--noheader", "--format=%i|%T|%S|%r", "--jobs", ",".join(arrays)])
    except SlurmError as error:
        if "Invalid job id" in error.stderr:  # every id has ended and been purged
            return {}
        raise
    states: dict[str, QueueEntry] = {}
    for line in out.splitlines():
        fields = line.strip().split("|", 3)  # the reason comes last: it is free text
        if len(fields) < 4:
            continue
        entry = QueueEntry(normalise_state(fields[1]), fields[3].strip(), _slurm_time(fields[2]))
        for task_id in expand_array_id(fields[0].strip()):
            states[task_id] = entry
    return states


def _slurm_time(text: str) -> float | None:
    """squeue's local-time timestamp ('2026-11-30T14:24:48') in epoch seconds; None for N/A."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


@dataclass(frozen=True)
class NodeResources:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    time_limit_min: float | None  # None: infinite


def _minutes(limit: str) -> float | None:
    """sinfo's time limit ('infinite', 'days-hh:mm:ss', 'hh:mm:ss', 'mm:ss', 'mm') in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def _gpus(gres: str) -> int:
    """GPUs in a gres string like 'gpu:2', 'gpu:a100:4(S:0-1)', '(null)'."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partition_nodes(partition: str | None) -> list[NodeResources]:
    """CPUs, memory, GPUs and time limit of each node of a partition (the default one if None)."""
    cmd = ["sinfo", "--Node", "--noheader", "--format=%N|%c|%m|%G|%l|%P"]
    if partition:
        cmd += ["--partition", partition]
    nodes = []
    for line in _run(cmd).splitlines():
        fields = line.strip().split("|")
        if len(fields) < 6:
            continue
        if not partition and not fields[5].endswith("*"):  # the default partition is starred
            continue
        memory = fields[2].rstrip("+")
        nodes.append(
            NodeResources(
                fields[0],
                int(fields[1].rstrip("+")),
                int(memory) if memory.isdigit() else 0,
                _gpus(fields[3]),
                _minutes(fields[4]),
            )
        )
    return nodes


_ARRAY_TASK = re.compile(r"^\d+_\d+$")


def scancel(*job_ids: str) -> None:
    """Cancel jobs, whole arrays (``'123'``) or array tasks (``'123_4'``), in one scancel call (per
    ARG_BYTES of ids).

    Cancelling a job that already finished is a no-op. ``scancel`` exits 0 even for an unknown
    job id; this raises SlurmError when it prints an error (for example "Invalid job id
    specified", which also means a finished job already purged from the controller).

    A pending array task that is still part of its array's pending range (``'123_[2-5]'``) has no
    job record of its own; cancelled as such it just vanishes and sacct never reports it. So the
    array tasks are first held (``scontrol hold``, best effort), which splits each into its own
    record, and sacct then shows them CANCELLED like any other job.
    """
    ids = [str(j) for j in job_ids]
    for tasks in id_chunks(j for j in ids if _ARRAY_TASK.match(j)):
        with contextlib.suppress(SlurmError):  # running, finished or unknown: nothing to split
            _run(["scontrol", "hold", ",".join(tasks)])
    for chunk in id_chunks(ids):
        _scancel(chunk)


def _scancel(ids: list[str]) -> None:
    cmd = ["scancel", "--verbose", *ids]  # without --verbose an unknown id is silent
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(cmd, str(exc)) from exc
    errors = [
        line for line in proc.stderr.splitlines() if "error:" in line and "already completing or completed" not in line
    ]
    if proc.returncode != 0 or errors:
        raise SlurmError(cmd, "\n".join(errors) or proc.stderr, proc.returncode)


def _job_states_from_controller(job_id: str) -> list[str]:
    """JobState of every record `scontrol show job` prints for job_id (several for an array)."""
    out = _run(["scontrol", "show", "job", "--oneliner", job_id])
    return re.findall(r"\bJobState=(\S+)", out)


def requeue(job_id: str, timeout: float = 60.0) -> None:
    """Requeue a job or array task and make it eligible to start again at once.

    ``scontrol requeue`` alone leaves the job pending for about 120 s (BeginTime = now + the
    credential lifetime), so this then runs ``scontrol update JobId=<id> StartTime=now``, timed
    with care (each point was seen failing on SLURM 22.05):

    * only once the job has left COMPLETING: an update sent while the old run is still being torn
      down is overwritten when the teardown ends;
    * only in a later wall-clock second than the old run's teardown: slurmd rejects a launch
      whose credential was created in the same second as the old run's revocation ("Job
      credential revoked") and the job then ends FAILED;
    * with StartTime=now rather than in the future: the update wakes the scheduler, which
      starts the job only if its begin time has passed; otherwise it waits for the next periodic
      pass (sched_interval/bf_interval, 30-60 s by default).

    The job must still be known to the controller (running, or finished less than MinJobAge
    seconds ago).
    """
    job_id = str(job_id)
    _run(["scontrol", "requeue", job_id])
    deadline = time.monotonic() + timeout
    while "COMPLETING" in _job_states_from_controller(job_id):
        if time.monotonic() > deadline:
            raise SlurmError(["scontrol", "requeue", job_id], f"job still COMPLETING after {timeout:g}s")
        time.sleep(0.2)
    time.sleep(1.05 - time.time() % 1.0)  # into the next second
    _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
