"""Checkpoints that survive the crash that interrupted them, and the choice of where to resume.

Writing: `AtomicCheckpointIO` writes every checkpoint through `deconcnn.runlog.atomic` (temporary
file, fsync, rename, directory fsync), so `last.ckpt` is always the old or the new file. Lightning's
own `_atomic_save` goes through an fsspec transaction without fsync: after a node crash the renamed
file can be empty. Given the run directory's identity (deconcnn.runlog.rundir), it writes nothing
once that directory was deleted or replaced: its `mkdir -p` would otherwise re-create it.

Resuming: `choose_resume_point` tries `last.ckpt`, then every other checkpoint newest first, and
takes the first that loads. Checkpoints that do not load are deleted (a half-written file would fail
every later attempt the same way), and so are checkpoints written after the one chosen: they hold a
state the resumed attempt will reach, and write, again. So are checkpoints taken when the metric
log was longer than it is now, or whose part of the log lacks some of their steps (the log was
cut, deleted or damaged by hand): resuming from them would leave those steps missing for good.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from deconcnn.runlog.atomic import TMP_SUFFIX, write_bytes_atomic
from deconcnn.runlog.metrics_log import METRICS_FILE, METRICS_LOG_STATE, verify_train_steps
from deconcnn.runlog.run_status import first_line
from deconcnn.runlog.rundir import RunDirIdentity

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
CHECKPOINT_GLOB = "*.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose files appear whole or not at all.

    It keeps the path of the file it wrote last (`last_saved_path`): the metric log's `checkpoint`
    record reads it once ModelCheckpoint reports a save (deconcnn.callbacks.metrics_logger).
    """

    last_saved_path: Path | None = None

    def __init__(self, run_dir: RunDirIdentity | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        # Serialised in memory first: torch.save into a file that hits a full disk reports a zip
        # writer error ("unexpected pos"), not the ENOSPC a user can act on.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        inside = Path(os.path.relpath(target, self.run_dir.path)) if self.run_dir is not None else None
        if self.run_dir is not None and inside is not None and ".." not in inside.parts:
            # Through the directory the run started in: a mkdir -p by path would make a deleted
            # run directory again (rm -rf between the check and the write).
            with self.run_dir.writing() as dir_fd:
                for parent in reversed(inside.parents[:-1]):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(parent, dir_fd=dir_fd)
                write_bytes_atomic(inside, buffer.getbuffer(), dir_fd=dir_fd)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, buffer.getbuffer())
        self.last_saved_path = target


@dataclass
class ResumePoint:
    """Where a run resumes: the checkpoint, its step, and the metric log's size when it was taken."""

    path: Path | None  # None: start from step 0
    step: int = 0
    log_offset: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None


def read_checkpoint_position(path: Path) -> tuple[int, int]:
    """(global step, metric log offset) of a checkpoint; raises if it does not load or lacks them."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    try:
        step = int(checkpoint["global_step"])
        offset = int(checkpoint["callbacks"][METRICS_LOG_STATE]["offset"])
    except (KeyError, TypeError) as missing:
        raise ValueError(f"not a deconcnn training checkpoint (no {missing})") from None
    return step, offset


def _candidates(checkpoint_dir: Path) -> list[Path]:
    files = [p for p in checkpoint_dir.glob(CHECKPOINT_GLOB) if p.is_file() and not p.name.startswith(".")]
    # last.ckpt first (it is the newest by construction), then newest first.
    return sorted(files, key=lambda p: (p.name != LAST_CHECKPOINT, -p.stat().st_mtime_ns))


def choose_resume_point(run_dir: Path) -> ResumePoint:
    """The newest checkpoint of the run that loads (see module doc); deletes the ones that must go."""
    checkpoint_dir = Path(run_dir) / CHECKPOINT_DIR
    if not checkpoint_dir.is_dir():
        return ResumePoint(None)
    for leftover in checkpoint_dir.glob(f".*{TMP_SUFFIX}"):  # a write the kill interrupted
        leftover.unlink(missing_ok=True)
    candidates = _candidates(checkpoint_dir)
    log = Path(run_dir) / METRICS_FILE
    log_size = log.stat().st_size if log.is_file() else 0
    notes: list[str] = []
    for index, path in enumerate(candidates):
        try:
            step, offset = read_checkpoint_position(path)
        except Exception as error:  # noqa: BLE001  torch raises many types for a damaged file
            notes.append(f"{path.name} does not load ({first_line(error)}): deleted")
            path.unlink(missing_ok=True)
            continue
        lost = (
            f"{METRICS_FILE} held {offset} bytes when it was taken, it holds {log_size}"
            if offset > log_size
            else verify_train_steps(log, step, required=False, limit=offset, repeats=True)  # missing steps
        )
        if lost:
            notes.append(f"{path.name} is not resumed from ({lost}): deleted")
            path.unlink(missing_ok=True)
            continue
        written = path.stat().st_mtime_ns
        for later in candidates[index + 1 :]:
            if later.exists() and later.stat().st_mtime_ns > written:
                notes.append(f"{later.name} was written after {path.name}: deleted")
                later.unlink()
        if notes:
            notes.append(f"resumed from {path.name} (step {step})")
        return ResumePoint(path, step, offset, notes)
    if notes:
        notes.append("no checkpoint to resume from: started over from step 0")
    return ResumePoint(None, 0, 0, notes)
