"""metrics.jsonl writer: one flat JSON object per line, buffered so per-batch logging never syncs.

Values may be 0-dim tensors still on the accelerator; they are stacked and copied to the host in one
transfer per flush, so a CUDA run pays one synchronisation per flush rather than one per batch.
Non-finite floats are written as null (strict JSON, so any CSV/Parquet reader takes the file).

Resume: a checkpoint stores the log's size when it was taken (`MetricsLog.sync`, fsynced), and a
resumed attempt cuts the log back to it (`truncate_to_resume_point`), so what the interrupted
attempt logged after its last checkpoint is logged again exactly once, by the attempt that redoes it.

Nothing silently lost: a log deleted under its writer (the file, or the run directory with it) makes
the next flush raise RunFilesLost, and a run ends `completed` only once `verify_train_steps` found
every training step in the log exactly once; run.json then records the log's size, which `status`
compares with the file (a size is a stat, not a parse) to catch a log deleted or cut later.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from deconcnn.runlog.atomic import write_bytes_atomic
from deconcnn.runlog.rundir import RunFilesLost
from deconcnn.runlog.schema import CHECKPOINT, KIND_KEY, STEP_KEY, TRAIN

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_KIND = CHECKPOINT.name
TRAIN_KIND = TRAIN.name
#: Key of the log's position in a checkpoint's callback states (MetricsLogPosition).
METRICS_LOG_STATE = "metrics_log"


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "reshape")


def host_values(records: list[dict[str, Any]]) -> None:
    """Replace tensor values in place by Python floats, with a single device-to-host copy."""
    slots = [(r, k) for r in records for k, v in r.items() if _is_tensor(v)]
    if not slots:
        return
    import torch  # only a writer holding tensors needs torch; readers of this module do not

    stacked = torch.stack([r[k].detach().reshape(()).to(torch.float64) for r, k in slots])
    for (record, key), value in zip(slots, stacked.cpu().tolist()):
        record[key] = value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only metric log of one run, flushed on demand."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict[str, Any]] = []
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._lost = False

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append(record)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> list[dict[str, Any]]:
        """Write every pending record in one write call; returns them with host values."""
        records, self._pending = self._pending, []
        if not records:
            return records
        host_values(records)
        if self._lost:  # reported once; the records go nowhere anyone can read
            return records
        self._file.write(b"".join(encode_record(r) for r in records))
        self._file.flush()
        if os.fstat(self._file.fileno()).st_nlink == 0:  # one fstat per flush: the file was unlinked
            self._lost = True
            raise RunFilesLost(f"{self.path} was deleted mid-run (rm -rf? a scratch purge?): nothing more is logged")
        return records

    def sync(self) -> int:
        """Flush and fsync; returns the log's size in bytes, the resume point of a checkpoint."""
        self.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        self.flush()
        self._file.close()


def encode_record(record: dict[str, Any]) -> bytes:
    return (json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False) + "\n").encode()


def verify_train_steps(
    path: Path, steps: int, *, required: bool = True, limit: int | None = None, repeats: bool = False
) -> str | None:
    """Why the log at `path` (its first `limit` bytes) does not hold training steps 0 .. steps-1
    exactly once; None when it does. `required=False`: a log without any `train` record passes (a
    run without a per-batch logger has none to count). `repeats`: a step may have several records
    (gradient accumulation logs every batch of a step). Only `train` lines are parsed: it is read
    when a run ends and when it resumes."""
    seen: set[int] = set()
    twice: list[int] = []
    marker = f'"{KIND_KEY}": "{TRAIN_KIND}"'.encode()
    try:
        with open(path, "rb") as log:
            data = log.read() if limit is None else log.read(limit)
    except FileNotFoundError:
        return f"{path.name} is missing" if steps and required else None
    for line in data.splitlines():
        if marker not in line:
            continue
        try:
            step = json.loads(line)[STEP_KEY]
        except (ValueError, KeyError, TypeError):
            return f"{path.name} holds a damaged training record"
        if step in seen and not repeats:
            twice.append(step)
        seen.add(step)
    if not seen and not required:
        return None
    expected = set(range(steps))
    problems = []
    missing = expected - seen
    if missing:
        problems.append(f"{len(missing)} of its {steps} training steps are missing (first {min(missing)})")
    if twice:
        problems.append(f"{len(twice)} are logged twice (first step {twice[0]})")
    if seen - expected:
        problems.append(f"{len(seen - expected)} lie beyond step {steps - 1}")
    return f"{path.name}: " + ", ".join(problems) if problems else None


def truncate_to_resume_point(run_dir: Path, offset: int, step: int) -> int:
    """Cut metrics.jsonl back to its first `offset` bytes, what it held when the checkpoint of
    `step` was taken; returns the records dropped.

    The checkpoint records of that same save point are kept: Lightning writes them after the
    checkpoint's state was taken (its size exists only once the file does), and the resumed
    attempt does not write those files again. (A log shorter than `offset` lost records the
    checkpoint covers: `choose_resume_point` never resumes from such a checkpoint.)
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return 0
    data = path.read_bytes()
    head, tail = data[:offset], data[offset:]
    kept, dropped = [], 0
    for line in tail.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1  # a line cut short by the kill
            continue
        if isinstance(record, dict) and record.get(KIND_KEY) == CHECKPOINT_KIND and record.get(STEP_KEY) == step:
            kept.append(line if line.endswith(b"\n") else line + b"\n")
        else:
            dropped += 1
    if tail:
        write_bytes_atomic(path, head + b"".join(kept))
    return dropped
