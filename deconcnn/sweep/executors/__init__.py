"""Where packs of processes run: ONE interface, a local process pool and SLURM behind it.

The unit of execution is a pack: the commands that share one slot (one GPU, or a CPU slot), each
its own process with its own directory and log, so one failing or being killed leaves its siblings
running. `launch` submits packs of training runs, `check` packs of one shortened run, and
`probe-resources` one pack holding the probe; all three wait (or not) through the same calls:

    executor = LocalExecutor(...) | SlurmExecutor(...)   # executors.local, executors.slurm
    handles = executor.submit(packs, submission)      # one handle per pack
    executor.poll(handles) -> {handle: SchedulerState}
    executor.cancel(handles)
    wait(executor, handles, on_done)                   # until every handle has ended
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from deconcnn.runlog.errors import SweepError

LiveState = Literal["pending", "running", "ended", "unknown", "unreachable"]
POLL_S = 2.0
STOP_GRACE_S = 30.0  # seconds a stopped run gets between SIGTERM and SIGKILL


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


@dataclass(frozen=True)
class SchedulerState:
    """What the executor knows of one handle.

    pending: it will run (SLURM PENDING/REQUEUED; queued in a live local launch); running: a live
    owner runs it (SLURM RUNNING; a live local launch); ended: `detail` says how (SLURM state);
    unknown: neither the scheduler nor a live launcher knows it; unreachable: the scheduler did
    not answer, so nothing can be said. `since`: when a running SLURM task's current run began
    (a requeue starts a new one), if known."""

    state: LiveState
    detail: str | None = None
    since: float | None = None


class Executor(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[str]:
        """Start or queue every pack; one handle per pack, in order. Nothing is started when this
        raises a SweepError."""

    @abstractmethod
    def poll(self, handles: Sequence[str]) -> dict[str, SchedulerState]:
        """The state of each handle, in as few scheduler calls as the executor can manage."""

    @abstractmethod
    def cancel(self, handles: Sequence[str]) -> None:
        """Stop the handles' packs (pending ones never start)."""

    def room(self) -> tuple[int | None, str]:
        """(packs the scheduler's limits let this user queue now, the limit that says so); None:
        no limit."""
        return None, ""

    def describe(self, handles: Sequence[str]) -> dict[str, Any]:
        """What the manifest keeps about a submission (job ids, pids); JSON-serialisable."""
        return {}

    def log_of(self, handle: str) -> str | None:
        """The file a submitted pack writes its stdout to, where the executor gives it one (SLURM)."""
        return None


def wait(
    executor: Executor,
    handles: Sequence[str],
    on_done: Callable[[str, SchedulerState], None] = lambda h, s: None,
    poll_s: float = POLL_S,
    on_poll: Callable[[], None] = lambda: None,
) -> dict[str, SchedulerState]:
    """Poll until every handle has ended (or is unknown to the scheduler); on_done once per handle,
    on_poll at every poll. Ctrl-C (or any exception) cancels what is still live."""
    final: dict[str, SchedulerState] = {}
    try:
        while len(final) < len(handles):
            on_poll()
            states = executor.poll([h for h in handles if h not in final])
            for handle, state in states.items():
                if state.state in ("ended", "unknown"):
                    final[handle] = state
                    on_done(handle, state)
            if len(final) < len(handles):
                time.sleep(poll_s)
    except BaseException:
        executor.cancel([h for h in handles if h not in final])
        raise
    return final


class ExecutorError(SweepError):
    """An executor that cannot be used here."""


def resolve_executor(requested: str) -> str:
    """`auto` is SLURM where a controller answers, else local; `slurm` needs one."""
    from deconcnn.sweep.executors.slurm_cli import slurm_available

    if requested not in ("auto", "local", "slurm"):
        raise ExecutorError(f"--executor must be auto, local or slurm, got {requested!r}")
    if requested == "auto":
        return "slurm" if slurm_available() else "local"
    if requested == "slurm" and not slurm_available():
        raise ExecutorError("--executor slurm: no SLURM controller answers here (sbatch/scontrol ping)")
    return requested
