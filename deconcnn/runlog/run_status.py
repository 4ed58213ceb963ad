"""run.json: one small JSON file per run saying where it stands. Read by the sweep layer."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Literal

RUN_STATUS_FILE = "run.json"
RUN_LOG = "stdout.log"          # the training process's stdout and stderr
PROCESS_FILE = "process.json"   # written by whatever starts the training process, when it does
Status = Literal["running", "completed", "failed", "diverged"]
FINAL_STATUSES = ("completed", "failed", "diverged")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_run_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / RUN_STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
            "resumed_from_step": None,
            "error": None,
        }

    def start(self, resumed_from_step: int | None = None) -> None:
        self.data["resumed_from_step"] = resumed_from_step
        write_json_atomic(self.path, self.data)

    def finish(self, status: Status, last_step: int, *, error: str | None = None,
               diverged_step: int | None = None) -> None:
        self.data.update(status=status, end_time=time.time(), last_step=last_step,
                         error=error, diverged_step=diverged_step)
        write_json_atomic(self.path, self.data)


def _slurm_job_id() -> str | None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
