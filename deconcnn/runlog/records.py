"""The sweep's own files as typed records, and the only module that spells their keys:

    manifest.json   Manifest: the sweep, its runs (RunEntry), each run's submissions (RunSubmission)
                    and the launch log (LaunchRecord)
    submissions.jsonl  launches recorded after manifest.json was written (submission_line): a
                    relaunch appends one line instead of rewriting every run's entry; read_manifest
                    folds them in, and the next full write of the manifest empties it
    process.json    ProcessRecord: which process runs a run (host, pid, start time, submission)
    run.json        RunStatus: where a run stands (deconcnn.runlog.run_status writes and reads it)

Each record has `to_json()` (a plain dict for json.dumps) and `from_json()`, which refuses a file
that cannot be trusted with RecordError (one line, the caller adds the path). Each file carries
`format_version`: a file written before versions existed reads as version 1, a newer version than
this code knows is refused with a line saying so (upgrade deconcnn). The records are frozen: a
launch records a submission by building a new manifest (`Manifest.with_submission`), never by
editing one another reader holds.

Reading is cheap on purpose: status reads one run.json per run (50,000 in a large sweep), so
RunStatus.from_json checks only what the state function trusts (a status string) and keeps any
field it does not know in `extra`, written back as it came.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import NotASweep, run_ids_problem

FORMAT_KEY = "format_version"
MANIFEST_FORMAT = 1
SUBMISSIONS_FORMAT = 1
PROCESS_FORMAT = 1
RUN_STATUS_FORMAT = 1
UNVERSIONED = 1  # a file written before format_version existed


class RecordError(SweepError):
    """A sweep file that cannot be trusted: its one-line reason, without the file's path."""


class NewerFormat(RecordError):
    """A file written by a newer deconcnn, in a format this one does not know."""


def check_format(data: Mapping[str, Any], known: int, what: str) -> None:
    """Refuse a file of a newer format than this code writes (or an ill-typed version)."""
    version = data.get(FORMAT_KEY, UNVERSIONED)
    if type(version) is not int or version < 1:
        raise RecordError(f"its {FORMAT_KEY} {version!r} is not a version number")
    if version > known:
        raise NewerFormat(
            f"it is a {what} of format {version}, newer than this deconcnn reads ({known}): upgrade deconcnn"
        )


# ---- manifest.json


@dataclass(frozen=True, slots=True)
class RunSubmission:
    """One submission of one run, as its manifest entry keeps it: the pack it went in."""

    id: str  # the launch's submission id (run.json and process.json of its attempt carry it)
    executor: str  # the backend's kind
    time: float
    handle: str | None  # the backend's handle id of the pack (None: an old manifest saved none)
    job_id: str | None  # the id the scheduler's own commands take (squeue, scancel)
    pack: tuple[str, ...]  # the run ids that went in the same pack
    log: str | None  # the pack's stdout, where the backend gives it one

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "executor": self.executor,
            "time": self.time,
            "handle": self.handle,
            "job_id": self.job_id,
            "pack": list(self.pack),
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Any, runs: Container[str] | None = None) -> RunSubmission:
        """RecordError when it is not a submission, or (given the manifest's `runs`) its pack
        names a run the manifest does not hold."""
        pack = data.get("pack", ()) if isinstance(data, dict) else None
        if not isinstance(pack, list | tuple) or (runs is not None and not all(map(runs.__contains__, pack))):
            raise RecordError("its pack names runs the manifest does not hold")
        get = data.get
        return cls(
            get("id", ""), get("executor", ""), get("time", 0), get("handle"), get("job_id"), tuple(pack), get("log")
        )


@dataclass(frozen=True, slots=True)
class RunEntry:
    """A run of the sweep: its identity (variant, overrides, swept values) and its submissions."""

    run_id: str
    variant: str
    overrides: tuple[str, ...]
    params: Mapping[str, Any]  # the swept keys and values, e.g. {"optim.lr": 0.1}
    attempts: int = 0
    submissions: tuple[RunSubmission, ...] = ()

    @property
    def last_submission(self) -> RunSubmission | None:
        """The latest submission, None when it was never submitted."""
        return self.submissions[-1] if self.submissions else None

    def identity_json(self) -> dict[str, Any]:
        """What the sweep file says of the run (its fingerprint hashes these), without its submissions."""
        return {
            "run_id": self.run_id,
            "variant": self.variant,
            "overrides": list(self.overrides),
            "params": self.params,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.identity_json(),
            "attempts": self.attempts,
            "submissions": [s.to_json() for s in self.submissions],
        }

    @classmethod
    def from_json(cls, run_id: str, data: Any, runs: Container[str] | None = None) -> RunEntry:
        """RecordError when it is not an entry of that run id, or (given the manifest's `runs`)
        one of its packs names a run the manifest does not hold. Status reads 50,000 of these:
        only what is trusted is checked."""
        if not isinstance(data, dict) or data.get("run_id", run_id) != run_id:
            raise RecordError(f"the entry of run {run_id} is not a run of that id")
        get = data.get
        variant, submissions, attempts, overrides = (
            get("variant"),
            get("submissions", ()),
            get("attempts", 0),
            get("overrides") or (),
        )
        if not isinstance(variant, str) or not isinstance(submissions, list | tuple):
            raise RecordError(f"the entry of run {run_id} has no variant or a malformed submissions list")
        if type(attempts) is not int or not isinstance(overrides, list | tuple):
            raise RecordError(f"the entry of run {run_id} has a malformed attempts count or overrides list")
        try:
            parsed = tuple([RunSubmission.from_json(s, runs) for s in submissions])
        except RecordError:
            raise RecordError(f"a submission of run {run_id} names runs the manifest does not hold") from None
        return cls(run_id, variant, tuple(overrides), get("params") or {}, attempts, parsed)


@dataclass(frozen=True, slots=True)
class Deferred:
    """The runs a job limit left for the next launch (a wave)."""

    runs: int
    limit: str | None

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """One launch, as the manifest's log of submissions keeps it."""

    id: str
    time: float
    executor: str
    runs: tuple[str, ...]
    skip_check: bool = False
    code_version: str | None = None
    note: str | None = None  # "nothing to submit"
    deferred: Deferred | None = None
    recovered: str | None = None  # reconciled from the journal of an interrupted launch
    #: What the backend keeps about the submission (Backend.describe: job ids, pids); its keys are
    #: the backend's own and are written beside these.
    described: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "time": self.time,
            "executor": self.executor,
            "runs": list(self.runs),
            "skip_check": self.skip_check,
            "code_version": self.code_version,
        }
        if self.note is not None:
            out["note"] = self.note
        if self.deferred is not None:
            out["deferred"] = self.deferred.to_json()
        if self.recovered is not None:
            out["recovered"] = self.recovered
        return {**self.described, **out}

    @classmethod
    def from_json(cls, data: Any) -> LaunchRecord:
        if not isinstance(data, dict) or not isinstance(data.get("runs", []), list):
            raise RecordError("a submission record is not an object with a runs list")
        deferred = data.get("deferred")
        return cls(
            data.get("id", ""),
            data.get("time", 0),
            data.get("executor", ""),
            tuple(data.get("runs", ())),
            bool(data.get("skip_check", False)),
            data.get("code_version"),
            data.get("note"),
            Deferred(deferred.get("runs", 0), deferred.get("limit")) if isinstance(deferred, dict) else None,
            data.get("recovered"),
            {k: v for k, v in data.items() if k not in _LAUNCH_KEYS},
        )


_LAUNCH_KEYS = frozenset(
    ("id", "time", "executor", "runs", "skip_check", "code_version", "note", "deferred", "recovered")
)


@dataclass(frozen=True, slots=True)
class Manifest:
    """manifest.json: the sweep it was launched from, every run, every launch."""

    sweep: str
    sweep_file: str | None
    fingerprint: str | None
    code_version: str | None
    created: float
    variants: tuple[str, ...]  # in the sweep file's order (the runs mapping is written sorted)
    axes: tuple[str, ...]  # likewise
    runs: Mapping[str, RunEntry]
    submissions: tuple[LaunchRecord, ...] = ()
    format_version: int = MANIFEST_FORMAT
    grid_source: str | None = None  # grid.sweep_source of what its runs were expanded from (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: MANIFEST_FORMAT,
            "sweep": self.sweep,
            "sweep_file": self.sweep_file,
            "fingerprint": self.fingerprint,
            "code_version": self.code_version,
            "created": self.created,
            "variants": list(self.variants),
            "axes": list(self.axes),
            "runs": {run_id: entry.to_json() for run_id, entry in self.runs.items()},
            "submissions": [s.to_json() for s in self.submissions],
            **({"grid_source": self.grid_source} if self.grid_source else {}),
        }

    @classmethod
    def from_json(cls, data: Any, name: str = "") -> Manifest:
        """`name`: the sweep's name where an old manifest records none (its directory's)."""
        if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
            raise RecordError("no 'runs' mapping")
        check_format(data, MANIFEST_FORMAT, "manifest")
        listed = data["runs"]
        problem = run_ids_problem(listed)
        if problem:
            raise RecordError(problem)
        runs = {run_id: RunEntry.from_json(run_id, entry, listed) for run_id, entry in listed.items()}
        submissions = data.get("submissions", [])
        if not isinstance(submissions, list):
            raise RecordError("its 'submissions' is not a list")
        return cls(
            data.get("sweep") or name,
            data.get("sweep_file"),
            data.get("fingerprint"),
            data.get("code_version"),
            data.get("created", 0.0),
            tuple(data.get("variants") or ()),
            tuple(data.get("axes") or ()),
            runs,
            tuple(map(LaunchRecord.from_json, submissions)),
            data.get(FORMAT_KEY, UNVERSIONED),
            source if isinstance(source := data.get("grid_source"), str) else None,
        )

    def ordered_runs(self) -> list[RunEntry]:
        """The runs by variant in the sweep file's order, then by run id."""
        order = {v: i for i, v in enumerate(self.variants)}
        return sorted(self.runs.values(), key=lambda e: (order.get(e.variant, len(order)), e.run_id))

    def logged(self, record: LaunchRecord) -> Manifest:
        """This manifest with a launch added to its log (and no run submitted by it)."""
        return replace(self, submissions=(*self.submissions, record))

    def with_submission(self, record: LaunchRecord, packs: Iterable[tuple[Sequence[str], RunSubmission]]) -> Manifest:
        """This manifest with a launch that submitted packs: each (run ids, their submission) pack's
        runs get an attempt."""
        runs = dict(self.runs)
        for names, submission in packs:
            for name in names:
                entry = runs[name]
                runs[name] = replace(entry, attempts=entry.attempts + 1, submissions=(*entry.submissions, submission))
        return replace(self, runs=runs, submissions=(*self.submissions, record))

    def recorded(self, submission_id: str) -> bool:
        """The manifest's log holds this submission."""
        return any(s.id == submission_id for s in self.submissions)


# ---- process.json


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process on a host, by pid and start time (a pid alone is recycled, the pair is not); in
    process.json also when it was started and by which submission."""

    host: str | None
    pid: int | None
    pid_start: float | None = None  # the kernel's start time (None: unknown, the pid alone is judged)
    started: float | None = None  # process.json: when the runner started it
    submission_id: str | None = None  # process.json: the submission whose pack started it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            FORMAT_KEY: PROCESS_FORMAT,
            "host": self.host,
            "pid": self.pid,
            "pid_start": self.pid_start,
        }
        if self.started is not None:
            out["started"] = self.started
        if self.submission_id is not None:
            out["submission_id"] = self.submission_id
        return out

    @classmethod
    def from_json(cls, data: Any) -> ProcessRecord:
        if not isinstance(data, dict):
            raise RecordError("not a process record")
        check_format(data, PROCESS_FORMAT, "process record")
        pid, started = data.get("pid"), data.get("started")
        if type(pid) is not int or not isinstance(started, (int, float, type(None))):
            raise RecordError(f"its pid {pid!r} or start time {started!r} is not a number")
        return cls(data.get("host"), pid, data.get("pid_start"), started, data.get("submission_id"))


# ---- run.json

UNREADABLE = "unreadable"  # the status of a run.json that does not parse: none of it is trusted


@dataclass(frozen=True, slots=True)
class RunStatus:
    """run.json: where one run stands, written by its training process (deconcnn.runlog.run_status)."""

    status: str  # running, completed, failed, diverged (UNREADABLE: read_checked_status's, never written)
    run_id: str | None = None
    attempt: int = 0
    start_time: float | None = None
    end_time: float | None = None
    last_step: int = 0
    diverged_step: int | None = None
    host: str | None = None
    pid: int | None = None
    slurm_job_id: str | None = None
    submission_id: str | None = None
    resumed_from_step: int | None = None
    resumed_from: str | None = None
    resume_note: str | None = None
    error: str | None = None
    metrics_log_bytes: int | None = None  # a completed run: the metric log's size then
    data: str | None = None  # what the run trained on, as the data source describes itself
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields this code does not know, kept

    def to_json(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: RUN_STATUS_FORMAT,
            "run_id": self.run_id,
            "status": self.status,
            "attempt": self.attempt,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "last_step": self.last_step,
            "diverged_step": self.diverged_step,
            "host": self.host,
            "pid": self.pid,
            "slurm_job_id": self.slurm_job_id,
            "submission_id": self.submission_id,
            "resumed_from_step": self.resumed_from_step,
            "resumed_from": self.resumed_from,
            "resume_note": self.resume_note,
            "error": self.error,
            "metrics_log_bytes": self.metrics_log_bytes,
            "data": self.data,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunStatus:
        """RecordError when it is not a run status (no status string) or of a newer format."""
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise RecordError("not a run status")
        if FORMAT_KEY in data:
            check_format(data, RUN_STATUS_FORMAT, "run status")
        get = data.get
        known = data.keys() <= _RUN_STATUS_KEYS  # as this code writes it: nothing else to keep
        return cls(
            data["status"],
            get("run_id"),
            get("attempt") or 0,
            get("start_time"),
            get("end_time"),
            get("last_step") or 0,
            get("diverged_step"),
            get("host"),
            get("pid"),
            get("slurm_job_id"),
            get("submission_id"),
            get("resumed_from_step"),
            get("resumed_from"),
            get("resume_note"),
            get("error"),
            get("metrics_log_bytes"),
            get("data"),
            _NO_EXTRA if known else {k: data[k] for k in data.keys() - _RUN_STATUS_KEYS},
        )

    @classmethod
    def unreadable(cls, error: str) -> RunStatus:
        """What read_checked_status returns for a run.json it cannot trust: none of it, with why."""
        return cls(UNREADABLE, error=error)

    @property
    def process(self) -> ProcessRecord:
        """The process that wrote it (host, pid; no start time)."""
        return ProcessRecord(self.host, self.pid)


_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})  # shared: most run.json files hold nothing else
_RUN_STATUS_KEYS = frozenset((FORMAT_KEY, *(f.name for f in fields(RunStatus) if f.name != "extra")))


RESTORE = "restore it from a backup, or launch the sweep file again under another --out"


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in between. A 50,000-run sweep is a few hundred thousand
    objects (its manifest, every run's state), none in a reference cycle, and each of the
    collections that their allocation triggers walks the whole heap again: a fifth to a third of
    the CPU of reading every run's state. For work that makes no cyclic garbage to speak of (not
    Hydra's composition: OmegaConf nodes point to their parents)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


# ---- submissions.jsonl


def submission_line(record: LaunchRecord, packs: Sequence[RunSubmission]) -> bytes:
    """A launch as the submission log keeps it: its record and the packs it submitted (each names
    its runs), one line."""
    data = {FORMAT_KEY: SUBMISSIONS_FORMAT, "launch": record.to_json(), "packs": [p.to_json() for p in packs]}
    return (json.dumps(data) + "\n").encode()


def complete_lines(data: bytes) -> int:
    """The length of the log's whole lines: a launch killed while appending leaves a last line
    without its newline, which is no record (and is cut off before the next line is appended)."""
    return data.rfind(b"\n") + 1


def read_submission_log(log_path: Path) -> bytes | None:
    """The submission log's bytes, None when there is none."""
    try:
        return log_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise NotASweep(f"{log_path} is corrupt ({error}): {RESTORE}") from None


def fold_submissions(manifest: Manifest, data: bytes, log_path: Path) -> Manifest:
    """The manifest with the launches its submission log (`data`, read from `log_path`) holds. A
    launch the manifest already holds is skipped (a full write of the manifest killed before it
    emptied the log, or one between the reads of the two); a torn last line is ignored, with a
    note: its launch was killed before it finished, and a SLURM launch's journal records it again
    at the next launch."""
    end = complete_lines(data)
    if end < len(data):
        print(
            f"deconcnn-sweep: note: {log_path}: its last line is torn (a launch was killed while writing it) and "
            "is ignored; the next launch of the sweep records what that launch queued from its journal",
            file=sys.stderr,
        )
    seen = {s.id for s in manifest.submissions}
    for number, line in enumerate(data[:end].splitlines(), 1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("packs"), list):
                raise RecordError("not a launch with a packs list")
            check_format(entry, SUBMISSIONS_FORMAT, "submission log")
            record = LaunchRecord.from_json(entry.get("launch"))
            if record.id in seen:
                continue
            packs = [RunSubmission.from_json(p, manifest.runs) for p in entry["packs"]]
        except NewerFormat as error:
            raise NotASweep(f"{log_path}: {error}") from None
        except (ValueError, RecordError) as error:  # ValueError: JSON or UTF-8
            raise NotASweep(f"{log_path} is corrupt (line {number}: {error}): {RESTORE}") from None
        manifest = manifest.with_submission(record, [(p.pack, p) for p in packs])
        seen.add(record.id)
    return manifest
