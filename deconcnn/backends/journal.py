"""The submission journal: what a launch is about to queue on a detached backend, on disk before the
scheduler is asked (SLURM: before sbatch is called; its reconciliation: deconcnn.backends.slurm).

A launch killed between sbatch's answer and the manifest's write would leave tasks queued that no
file of the sweep records (nothing to `status`, `cancel` or relaunch them by). So the launch
writes its plan first, then each array sbatch accepted, and removes the file once the manifest
records the submission:

    <sweep>/submitting.jsonl
        {"submission": {...}, "record": {...}, "arrays": [{"name": job name, "packs": [[run id, ...], ...]}]}
        {"array": 0, "job_id": "123"}          one line per array sbatch accepted, fsync'ed
        ...

Each array's job name holds the submission id, so an array sbatch accepted but whose id was never
written (the launch died in between) is found by its name (`squeue`/`sacct --name`). The next
launch of the sweep reconciles a journal it finds (Backend.recover), under the launch lock: every array found is
recorded in the manifest as the submission it was (task i of an array runs its pack i), and the
journal goes. A journal whose submission the manifest already records is simply removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deconcnn.backends.pack import Submission


def array_name(submission: Submission, index: int) -> str:
    """The SLURM job name of a submission's `index`-th array: people read the sweep in it, the
    journal finds the array by it."""
    return f"{submission.name}-{submission.id}-{index}"


class Journal:
    """Written by a launch: `begin` before the first sbatch, `accepted` after each, `finish` once
    the manifest records the submission (or nothing of it is queued)."""

    def __init__(self, path: Path, submission: Submission, record: dict[str, Any]) -> None:
        self.path, self.submission, self.record = Path(path), submission, record

    def _append(self, entry: dict[str, Any], mode: int = os.O_APPEND) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | mode, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def begin(self, arrays: Sequence[Sequence[Sequence[str]]]) -> None:
        """`arrays`: the run ids of each pack of each array, in submission order."""
        plan = [{"name": array_name(self.submission, i), "packs": [list(p) for p in a]} for i, a in enumerate(arrays)]
        self._append({"submission": asdict(self.submission), "record": self.record, "arrays": plan}, os.O_TRUNC)

    def accepted(self, index: int, job_id: str) -> None:
        self._append({"array": index, "job_id": job_id})

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def read_journal(path: Path) -> tuple[dict[str, Any], dict[int, str]] | None:
    """(its plan, {array index: job id}) of a journal; None when there is none. A torn last line
    (the launch died while writing it) is skipped: the array is then found by its name."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    if not entries or not isinstance(entries[0], dict) or "arrays" not in entries[0]:
        return None  # torn before the plan was whole: nothing was submitted yet
    accepted = {int(e["array"]): str(e["job_id"]) for e in entries[1:] if isinstance(e, dict) and "job_id" in e}
    return entries[0], accepted
