"""run.json: one small JSON file per run saying where it stands. Read by the sweep layer.

It is written on every way out of a training process (completed, diverged, failed with the error's
first line), also on a full disk: a status that cannot get new blocks overwrites the file's own
blocks in place (a filesystem allocates whole blocks, 512 bytes at the least and 4 KiB on the usual
ones, and any status fits in its file's: the free text is cut to MAX_TEXT).

It is written only into the directory the run started in (deconcnn.runlog.rundir): a directory
deleted mid-run gets no run.json at all rather than a re-created one saying completed. A completed
run.json records the metric log's size (`metrics_log_bytes`); `read_checked_status`, what status
and relaunch read, turns a completed run whose log is now missing or shorter into a failed one,
and an unparsable run.json into status `unreadable` with its own error.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from deconcnn.runlog.atomic import json_text, write_bytes_atomic
from deconcnn.runlog.metrics_log import METRICS_FILE
from deconcnn.runlog.records import RecordError, RunStatus
from deconcnn.runlog.rundir import RunDirIdentity

RUN_STATUS_FILE = "run.json"
RUN_LOG = "stdout.log"  # the training process's stdout and stderr
PROCESS_FILE = "process.json"  # written by whatever starts the training process, when it does
SUBMISSION_ENV = "DECONCNN_SUBMISSION_ID"  # set by the sweep's pack runner: which submission started this attempt
MAX_TEXT = 500  # error and resume notes are cut to this, so a final status fits the file's blocks
Status = Literal["running", "completed", "failed", "diverged"]
KEEP_STATUSES = ("completed", "diverged")  # results: a relaunch never runs them again
#: How run.json's `data` (the data source's own description) begins for generated data: the report
#: puts a banner over any sweep with such runs.
SYNTHETIC_DATA = "SYNTHETIC data"


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object file of a run; None when it is absent or damaged."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_run_status(run_dir: Path) -> RunStatus | None:
    """run.json as it is; None when it is absent, damaged or not a run status."""
    data = read_json(Path(run_dir) / RUN_STATUS_FILE)
    try:
        return RunStatus.from_json(data) if data is not None else None
    except RecordError:
        return None


def completed_log_problem(run_dir: str | Path, run: RunStatus) -> str | None:
    """Why a completed run's metric log no longer holds what it held at completion (missing, or
    shorter than `metrics_log_bytes`); a stat, no parse. None when it does, or nothing was recorded."""
    recorded = run.metrics_log_bytes
    if not isinstance(recorded, int) or recorded <= 0:
        return None
    try:
        size = os.stat(os.path.join(run_dir, METRICS_FILE)).st_size
    except (FileNotFoundError, NotADirectoryError):
        return f"{METRICS_FILE} is missing"
    return f"{METRICS_FILE} is short ({size} of {recorded} bytes)" if size < recorded else None


def read_small_file(path: str, chunk: int = 1 << 16) -> bytes:
    """A small file's bytes in three system calls (open, read, close): status reads 50,000."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_all(fd, chunk)
    finally:
        os.close(fd)


def read_small_file_stat(path: str) -> tuple[bytes, os.stat_result]:
    """A small file's bytes and the stat of the very file they were read from (fstat of the open
    file: a file renamed over it meanwhile is not mistaken for it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_all(fd), os.fstat(fd)
    finally:
        os.close(fd)


def _read_all(fd: int, chunk: int = 1 << 16) -> bytes:
    """A read of a regular file returns less than asked only at its end."""
    parts = [os.read(fd, chunk)]
    while len(parts[-1]) == chunk:
        parts.append(os.read(fd, chunk))
    return b"".join(parts)


def read_checked_status(run_dir: str | Path) -> RunStatus | None:
    """run.json as status and relaunch trust it: None when absent; status UNREADABLE with `error`
    when it does not parse (or is of a newer format); `completed` with a missing or short metric
    log reads `failed`, with why."""
    try:
        text = read_small_file(os.path.join(run_dir, RUN_STATUS_FILE))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return unreadable(error.strerror or str(error))
    return checked_log(run_dir, parse_status(text))


def unreadable(why: str) -> RunStatus:
    return RunStatus.unreadable(f"{RUN_STATUS_FILE} unreadable: {why}")


def parse_status(text: bytes) -> RunStatus:
    """run.json's bytes as it says them, or status UNREADABLE with why (its log is not checked)."""
    try:
        return RunStatus.from_json(json.loads(text))
    except (ValueError, UnicodeDecodeError) as error:
        return unreadable(first_line(error))
    except RecordError as error:
        return unreadable(str(error))


def checked_log(run_dir: str | Path, run: RunStatus) -> RunStatus:
    """`run` (parse_status), failed with why when it says completed but its metric log is missing or short."""
    problem = completed_log_problem(run_dir, run) if run.status == "completed" else None
    if problem:
        why = f"{RUN_STATUS_FILE} says completed, but {problem}: a relaunch trains it again"
        return replace(run, status="failed", error=why)
    return run


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, the form run.json and status print."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def write_status(run_dir: RunDirIdentity, data: dict[str, Any]) -> None:
    """run.json in the run's own directory (through its descriptor: never into a path made again)."""
    encoded = json_text(data).encode()
    try:
        write_bytes_atomic(RUN_STATUS_FILE, encoded, dir_fd=run_dir.fd)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        # The disk is full: rewrite the file in the blocks it already holds.
        try:
            fd = os.open(RUN_STATUS_FILE, os.O_RDWR, dir_fd=run_dir.fd)
        except FileNotFoundError:
            raise error from None
        with os.fdopen(fd, "r+b") as handle:
            if os.fstat(fd).st_blocks * 512 < len(encoded):
                raise error from None
            handle.write(encoded)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


class RunStatusFile:
    """Keeps run.json of one attempt up to date: started, then finished with an outcome."""

    def __init__(self, run_dir: Path, run_id: str | None = None) -> None:
        self.run_dir = RunDirIdentity(run_dir)  # the directory it was started in, the only one it writes to
        previous = read_run_status(Path(run_dir))
        self.data = RunStatus(
            "running",
            run_id or Path(run_dir).name,
            attempt=int(previous.attempt if previous else 0) + 1,
            start_time=time.time(),
            last_step=previous.last_step if previous else 0,
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=_slurm_job_id(),
            submission_id=os.environ.get(SUBMISSION_ENV),
        )

    def _write(self) -> None:
        with self.run_dir.writing():
            write_status(self.run_dir, self.data.to_json())

    def start(self, **fields: Any) -> None:
        """Written as the run starts, with `fields` of RunStatus (the data it trains on)."""
        self.data = replace(self.data, **fields)
        self._write()

    def update(self, **fields: Any) -> None:
        cut: dict[str, Any] = {k: v[:MAX_TEXT] if isinstance(v, str) else v for k, v in fields.items()}
        self.data = replace(self.data, **cut)
        self._write()

    def finish(
        self,
        status: Status,
        last_step: int,
        *,
        error: str | None = None,
        diverged_step: int | None = None,
        log_bytes: int | None = None,
    ) -> None:
        """The outcome; nothing is written when the run directory is gone (the caller's error says so)."""
        self.data = replace(
            self.data,
            status=status,
            end_time=time.time(),
            last_step=last_step,
            error=error[:MAX_TEXT] if error else error,
            diverged_step=diverged_step,
            metrics_log_bytes=log_bytes,
        )
        if self.run_dir.gone() is None:
            try:
                write_status(self.run_dir, self.data.to_json())
            except FileNotFoundError:
                if self.run_dir.gone() is None:
                    raise  # deleted since the check (rm -rf deletes the directory last): the caller's error says so


def _slurm_job_id() -> str | None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
