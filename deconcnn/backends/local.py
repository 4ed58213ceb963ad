"""The local backend: packs run on this machine, one pack per GPU at a time; without GPUs,
`cpu_slots` packs at a time with the CPU cores split between their runs.

The pool lives in the process that submitted (the launch waits for it). A handle names that
process (host, pid, start time) and the pack's index, so another process -- `status`, a relaunch
-- can tell "queued in a live launch" from "its launch is gone".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deconcnn.backends import processes
from deconcnn.backends.base import STOP_GRACE_S, Backend, Handle, LiveState, SchedulerState
from deconcnn.backends.journal import Journal
from deconcnn.backends.pack import Pack, Submission
from deconcnn.backends.runner import MpsDaemon, run_pack
from deconcnn.runlog.records import ProcessRecord

KIND = "local"


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return result.stdout.split() if result.returncode == 0 else []


def launcher_of(handle: Handle) -> ProcessRecord:
    """The process identity a local handle names."""
    _, host, pid, pid_start, _ = handle.id.split(":")
    return ProcessRecord(host, int(pid), float(pid_start))


@dataclass
class _PackState:
    pack: Pack
    stop: threading.Event = field(default_factory=threading.Event)
    state: LiveState = "pending"
    codes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class LocalBackend(Backend):
    kind = KIND
    detached = False
    auto_priority = 0

    def __init__(
        self, gpus: Sequence[str] | None = None, cpu_slots: int = 1, mps: bool = False, grace_s: float = STOP_GRACE_S
    ) -> None:
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        if cpu_slots < 1:
            raise ValueError(f"cpu_slots must be >= 1, got {cpu_slots}")
        self.cpu_slots, self.mps, self.grace_s = cpu_slots, mps, grace_s
        me = processes.identity()
        self._prefix = f"{KIND}:{me.host}:{me.pid}:{me.pid_start or 0:.2f}"
        self._packs: dict[Handle, _PackState] = {}
        self._lock = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def create(
        cls,
        folder: Path,
        settings: dict[str, Any],
        *,
        slots: int = 1,
        mps: bool = False,
        grace_s: float = STOP_GRACE_S,
        journal: Journal | None = None,
    ) -> LocalBackend:
        """Its packs live in this process (no journal: they end with it); `folder` is not used."""
        return cls(cpu_slots=slots, mps=mps, grace_s=grace_s)

    @classmethod
    def attach(cls, handle: Handle) -> LocalBackend:
        """Polls the handles of any launch (poll_handles); cancels nothing of another process: a
        live launch stops a run once cancel.jsonl lists it, and `cancel` signals its process."""
        return cls(gpus=[])

    def fit_packing(self, per_pack: dict[str, int], cpu_slots: int | None) -> dict[str, int]:
        if self.gpus:
            return per_pack
        # No GPU: single-run packs, `cpu_slots` at a time sharing the cores.
        self.cpu_slots = cpu_slots or max(per_pack.values())
        return {}

    @property
    def slots(self) -> int:
        return len(self._slot_names)

    @property
    def gpus_per_pack(self) -> int:
        return 1 if self.gpus else 0

    @property
    def _slot_names(self) -> list[str | None]:
        return list(self.gpus) if self.gpus else [None] * self.cpu_slots

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[Handle]:
        slots = self._slot_names
        free = list(slots)
        cpus = os.cpu_count() or 1
        self._pool = self._pool or ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="pack")
        handles = []

        def execute(handle: Handle) -> None:
            entry = self._packs[handle]
            with self._lock:
                self._lock.wait_for(lambda: bool(free))
                slot = free.pop()
                if entry.stop.is_set():
                    free.append(slot)
                    self._lock.notify()
                    entry.state = "ended"
                    return
                entry.state = "running"
            try:
                env = {"CUDA_VISIBLE_DEVICES": slot if slot is not None else ""}
                threads = None if slot is not None else processes.torch_threads(cpus, len(slots) * len(entry.pack))
                if self.mps and slot is not None:
                    with MpsDaemon() as mps_env:
                        entry.codes = run_pack(
                            entry.pack,
                            submission,
                            threads_per_run=threads,
                            extra_env={**env, **mps_env},
                            stop=entry.stop,
                            grace_s=self.grace_s,
                        )
                else:
                    entry.codes = run_pack(
                        entry.pack,
                        submission,
                        threads_per_run=threads,
                        extra_env=env,
                        stop=entry.stop,
                        grace_s=self.grace_s,
                    )
            except Exception as error:  # noqa: BLE001 - reported through poll, the pool thread must not die silently
                entry.error = f"{type(error).__name__}: {error}"
            finally:
                with self._lock:
                    entry.state = "ended"
                    free.append(slot)
                    self._lock.notify()

        for pack in packs:
            # Numbered across submits: the same submission submitted twice gets new handles.
            handle = Handle(KIND, f"{self._prefix}:{submission.id}-{len(self._packs)}")
            self._packs[handle] = _PackState(list(pack))
            handles.append(handle)
            self._pool.submit(execute, handle)
        return handles

    def poll(self, handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
        out = {}
        for handle in handles:
            own = self._packs.get(handle)
            if own is not None:
                out[handle] = SchedulerState(own.state, own.error)
            else:
                out.update(poll_handles([handle]))
        return out

    def cancel(self, handles: Sequence[Handle]) -> None:
        """Stop own packs (queued ones never start) and wait until their processes are gone."""
        for handle in handles:
            if handle in self._packs:
                self._packs[handle].stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._pool is not None and all(p.stop.is_set() for p in self._packs.values()):
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self, handles: Sequence[Handle]) -> dict[str, Any]:
        return {"launcher": processes.identity().to_json(), "slots": self.slots}

    def where(self, handle: Handle) -> str:
        return "a local process"


def poll_handles(handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
    """Handles of another process's launch: a live launch owns its packs, queued or running."""
    return {h: SchedulerState("running" if processes.alive(launcher_of(h)) else "unknown") for h in handles}
