"""What a backend runs: packs of commands, and the submission that started them."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

TRAIN_MODULE = "deconcnn.train"  # what a run is: `python -m deconcnn.train <overrides>`
THROUGHPUT_MODULE = "deconcnn.training.throughput"  # the resource probe's worker: a run's loop, timed


@dataclass(frozen=True)
class Command:
    """One process of a pack: `python -m <module> <args>`, run in `workdir` (its log goes there)."""

    name: str
    module: str
    args: tuple[str, ...]
    workdir: str

    def argv(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module, *self.args]


Pack = Sequence[Command]


@dataclass(frozen=True)
class Submission:
    """What a pack's processes are told about the submission that started them."""

    id: str
    name: str  # job name (SLURM), for people reading squeue
    cancel_file: str | None = None  # cancel.jsonl of the sweep: the pack runner stops what it lists
    submitted_at: float = field(default_factory=time.time)
