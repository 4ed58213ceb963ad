"""Where packs of processes run: ONE interface (Backend), each backend a subclass found by kind
(deconcnn.backends.registry): a local process pool and SLURM ship with deconcnn.

The unit of execution is a pack: the commands that share one slot (one GPU, or a CPU slot), each
its own process with its own directory and log, so one failing or being killed leaves its siblings
running. `launch` submits packs of training runs, `check` packs of one shortened run, and
`probe-resources` one pack holding the probe; all three wait (or not) through the same calls:

    cls = registry.resolve("auto")                     # or a kind: "local", "slurm", a plugin's
    backend = cls.create(folder, cls.settings(run_overrides, launcher_overrides))
    handles = backend.submit(packs, submission)        # one Handle(kind, id) per pack
    backend.poll(handles) -> {handle: SchedulerState}
    backend.cancel(handles)
    wait(backend, handles, on_done)                    # until every handle has ended
    registry.attach(handle)                            # the same, from a handle a manifest saved

Every backend passes the contract suite (tests/backends/contract.py).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from deconcnn.backends.pack import Pack, Submission
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.records import LaunchRecord, Manifest

if TYPE_CHECKING:
    from deconcnn.backends.journal import Journal

LiveState = Literal["pending", "running", "ended", "unknown", "unreachable"]
AUTO = "auto"  # the backend resolve() picks: the available one of highest priority
LAUNCHER_PREFIXES = ("hydra.launcher.", "hydra/launcher=")
POLL_S = 2.0
STOP_GRACE_S = 30.0  # seconds a stopped run gets between SIGTERM and SIGKILL


@dataclass(frozen=True)
class SchedulerState:
    """What the backend knows of one handle.

    pending: it will run (SLURM PENDING/REQUEUED; queued in a live local launch); running: a live
    owner runs it (SLURM RUNNING; a live local launch); ended: `detail` says how (SLURM state);
    unknown: neither the scheduler nor a live launcher knows it; unreachable: the scheduler did
    not answer, so nothing can be said. `since`: when a running SLURM task's current run began
    (a requeue starts a new one), if known."""

    state: LiveState
    detail: str | None = None
    since: float | None = None


@dataclass(frozen=True)
class Handle:
    """One submitted pack: the kind of backend that took it and that backend's id for it (a SLURM
    task id, a local launch's slot). The manifest keeps both (a submission's `executor` and
    `handle`), so any process can rebuild a backend that polls it (registry.attach)."""

    kind: str
    id: str


class Backend(ABC):
    """Where packs run. A subclass is a backend: a kind, `detached`, the abstract methods (create,
    attach, submit, poll, cancel); registered by an entry point (deconcnn.backends.registry)."""

    kind: ClassVar[str]
    #: True: submit returns while the packs run on without the submitting process (a scheduler
    #: holds them), so a launch returns at once and a cancel must ask the backend. False: the packs
    #: live in the submitting process, which waits for them and stops them when it is stopped.
    detached: ClassVar[bool]
    #: resolve("auto") takes the available backend with the highest priority; None: never automatic.
    auto_priority: ClassVar[int | None] = None
    #: Seconds `status --watch` waits at least between refreshes of a sweep on this backend (each
    #: refresh polls it).
    watch_min_s: ClassVar[float] = 2.0
    #: How a plan says where its tasks run (`launch --dry-run`).
    plan_where: ClassVar[str] = "this machine"

    stopped_by: str | None = None  # why submit took fewer packs than it was given (a job limit)

    # ---- the backend as a class: choosing it, its settings, rebuilding it from a handle

    @classmethod
    def unavailable(cls) -> str | None:
        """Why it cannot be used here (None: it can)."""
        return None

    @classmethod
    def settings(cls, run_overrides: Sequence[str], launcher_overrides: Sequence[str]) -> dict[str, Any]:
        """The sweep's settings for this backend from its run and `hydra.launcher` overrides,
        refused with a SweepError naming the key where they cannot work; {} when it takes none."""
        return {}

    @classmethod
    def check_feasible(cls, settings: dict[str, Any]) -> None:
        """Refuse (SweepError) settings the backend can never satisfy here (no node holds a task)."""
        return None

    @classmethod
    def single_gpu(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings for one task on at most one GPU (the probe measures one GPU)."""
        return settings

    @classmethod
    def plan_gpus(cls, settings: dict[str, Any]) -> int:
        """GPUs each task of a plan gets, as far as the settings say (0: none)."""
        return 0

    @classmethod
    @abstractmethod
    def create(
        cls,
        folder: Path,
        settings: dict[str, Any],
        *,
        slots: int = 1,
        mps: bool = False,
        grace_s: float = STOP_GRACE_S,
        journal: Journal | None = None,
    ) -> Backend:
        """A backend that submits: its scripts and logs under `folder`, `slots` packs at a time
        where it runs them itself, a journal where its packs outlive the submitter."""

    @classmethod
    @abstractmethod
    def attach(cls, handle: Handle) -> Backend:
        """A backend that polls and cancels `handle`, whichever process submitted it."""

    @classmethod
    def recover(
        cls,
        journal: Path,
        folder: Path,
        manifest: Manifest,
        record_packs: RecordPacks,
        write_manifest: Callable[[Manifest], None],
    ) -> str | None:
        """Record in the manifest what an interrupted launch on this backend queued, from its
        journal (deconcnn.backends.journal): `record_packs(manifest, record, submission, [(handle,
        run ids)], backend)` returns the manifest with a submission recorded as a launch records
        it, `write_manifest` writes it. A line saying so, None when there was nothing;
        BackendError when the scheduler cannot say, the journal then stays."""
        return None

    # ---- the backend as an object: submitting, polling, cancelling

    @abstractmethod
    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[Handle]:
        """Start or queue every pack; one distinct handle per pack, in order, also when the same
        packs are submitted again. Nothing is started when this raises a SweepError; fewer handles
        than packs: the rest were refused, `stopped_by` says why."""

    @abstractmethod
    def poll(self, handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
        """The state of each handle, in as few scheduler calls as the backend can manage; never
        raises for a handle it does not know (`unknown`) or a scheduler that does not answer
        (`unreachable`)."""

    @abstractmethod
    def cancel(self, handles: Sequence[Handle]) -> None:
        """Stop the handles' packs (pending ones never start)."""

    def room(self) -> tuple[int | None, str]:
        """(packs the scheduler's limits let this user queue now, the limit that says so); None:
        no limit."""
        return None, ""

    def fit_packing(self, per_pack: dict[str, int], cpu_slots: int | None) -> dict[str, int]:
        """Runs per pack for each variant, as this backend's slots take them (`per_pack` is what
        the probe or --workers-per-gpu asks; `cpu_slots` is --parallel)."""
        return per_pack

    @property
    def slots(self) -> int | None:
        """Packs it runs at once, where it runs them itself (None: a scheduler decides)."""
        return None

    @property
    def gpus_per_pack(self) -> int:
        return 0

    def describe(self, handles: Sequence[Handle]) -> dict[str, Any]:
        """What the manifest keeps about a submission (job ids, pids); JSON-serialisable."""
        return {}

    def log_of(self, handle: Handle) -> str | None:
        """The file a submitted pack writes its stdout to, where the backend gives it one."""
        return None

    def job_id(self, handle: Handle) -> str | None:
        """The id people give the scheduler's own commands for this pack (squeue, scancel); None
        where there is no scheduler."""
        return handle.id if self.detached else None

    def where(self, handle: Handle) -> str:
        """Where the pack runs, for a line of output."""
        return f"{self.kind} {handle.id}"


def wait(
    backend: Backend,
    handles: Sequence[Handle],
    on_done: Callable[[Handle, SchedulerState], None] = lambda h, s: None,
    poll_s: float = POLL_S,
    on_poll: Callable[[], None] = lambda: None,
) -> dict[Handle, SchedulerState]:
    """Poll until every handle has ended (or is unknown to the scheduler); on_done once per handle,
    on_poll at every poll. Ctrl-C (or any exception) cancels what is still live."""
    final: dict[Handle, SchedulerState] = {}
    try:
        while len(final) < len(handles):
            on_poll()
            states = backend.poll([h for h in handles if h not in final])
            for handle, state in states.items():
                if state.state in ("ended", "unknown"):
                    final[handle] = state
                    on_done(handle, state)
            if len(final) < len(handles):
                time.sleep(poll_s)
    except BaseException:
        backend.cancel([h for h in handles if h not in final])
        raise
    return final


#: Records a submission in a manifest as a launch does: (manifest, record, submission, [(handle,
#: run ids)], backend) -> the manifest with it.
RecordPacks = Callable[[Manifest, LaunchRecord, Submission, "list[tuple[Handle, list[str]]]", Backend], Manifest]


class BackendError(SweepError):
    """A backend that cannot be used here, or a kind no installed backend has."""


def is_launcher_override(override: str) -> bool:
    """`hydra.launcher.x=...`, `+hydra.launcher.x=...`, `hydra/launcher=...`: the backend's settings
    (Backend.settings), not the runs'."""
    return override.lstrip("+~").startswith(LAUNCHER_PREFIXES)
