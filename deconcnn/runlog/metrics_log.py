"""metrics.jsonl writer: one flat JSON object per line, buffered so per-batch logging never syncs.

Values may be 0-dim tensors still on the accelerator; they are stacked and copied to the host in one
transfer per flush, so a CUDA run pays one synchronisation per flush rather than one per batch.
Non-finite floats are written as null (strict JSON, so any CSV/Parquet reader takes the file).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
STAMP_KEYS = ("kind", "step", "epoch", "epoch_frac", "time")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "reshape")


def _host_values(records: list[dict[str, Any]]) -> None:
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
        self._file = open(self.path, "a", encoding="utf-8")

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
        _host_values(records)
        lines = "".join(
            json.dumps({k: _json_safe(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in records
        )
        self._file.write(lines)
        self._file.flush()
        return records

    def close(self) -> None:
        self.flush()
        self._file.close()


def keep_on_resume(record: dict[str, Any], resume_step: int) -> bool:
    """Whether a record of an interrupted attempt survives a resume from a checkpoint at resume_step.

    The checkpoint holds the weights after resume_step optimizer steps; the resumed attempt trains
    the batch of step resume_step again, so train records from that step on are redone, and every
    other record describing a later state is redone too.
    """
    if record.get("kind") == "train":
        return record["step"] < resume_step
    return record["step"] <= resume_step


def truncate_for_resume(run_dir: Path, resume_step: int, records: Iterable[dict[str, Any]]) -> int:
    """Rewrite metrics.jsonl keeping only what precedes the checkpoint; returns records dropped."""
    path = Path(run_dir) / METRICS_FILE
    kept, dropped = [], 0
    for record in records:
        if keep_on_resume(record, resume_step):
            kept.append(json.dumps(record, allow_nan=False) + "\n")
        else:
            dropped += 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped
