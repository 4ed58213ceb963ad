"""run.json: one small JSON file per run saying where it stands. Read by the sweep layer.

It is written on every way out of a training process (completed, diverged, failed with the error's
first line), also on a full disk: a status that cannot get new blocks overwrites the file's own
blocks in place (a filesystem allocates whole blocks, 512 bytes at the least and 4 KiB on the usual
ones, and any status fits in its file's: the free text is cut to MAX_TEXT).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Literal

from deconcnn.runlog.atomic import json_text, write_text_atomic

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


def read_run_status(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / RUN_STATUS_FILE)


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, the form run.json and status print."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def write_status(path: Path, data: dict[str, Any]) -> None:
    encoded = json_text(data).encode()
    try:
        write_text_atomic(path, encoded.decode())
    except OSError as error:
        # The disk is full: rewrite the file in the blocks it already holds.
        if error.errno != errno.ENOSPC or not path.is_file() or path.stat().st_blocks * 512 < len(encoded):
            raise
        with open(path, "r+b") as handle:
            handle.write(encoded)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


class RunStatusFile:
    """Keeps run.json of one attempt up to date: started, then finished with an outcome."""

    def __init__(self, run_dir: Path, run_id: str | None = None) -> None:
        self.path = Path(run_dir) / RUN_STATUS_FILE
        previous = read_run_status(Path(run_dir)) or {}
        self.data: dict[str, Any] = {
            "run_id": run_id or Path(run_dir).name,
            "status": "running",
            "attempt": int(previous.get("attempt", 0)) + 1,
            "start_time": time.time(),
            "end_time": None,
            "last_step": previous.get("last_step", 0),
            "diverged_step": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": _slurm_job_id(),
            "submission_id": os.environ.get(SUBMISSION_ENV),
            "resumed_from_step": None,
            "resumed_from": None,
            "resume_note": None,
            "error": None,
        }

    def start(self, **fields: Any) -> None:
        self.data.update(fields)
        write_status(self.path, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update({k: v[:MAX_TEXT] if isinstance(v, str) else v for k, v in fields.items()})
        write_status(self.path, self.data)

    def finish(
        self, status: Status, last_step: int, *, error: str | None = None, diverged_step: int | None = None
    ) -> None:
        self.data.update(
            status=status,
            end_time=time.time(),
            last_step=last_step,
            error=error[:MAX_TEXT] if error else error,
            diverged_step=diverged_step,
        )
        write_status(self.path, self.data)


def _slurm_job_id() -> str | None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
