"""The local executor: packs run on this machine, one pack per GPU at a time; without GPUs,
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

from deconcnn.sweep import processes
from deconcnn.sweep.executors import STOP_GRACE_S, Executor, LiveState, Pack, SchedulerState, Submission
from deconcnn.sweep.executors.runner import MpsDaemon, run_pack

PREFIX = "local"


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


def launcher_of(handle: str) -> dict[str, object]:
    """The process identity a local handle names."""
    _, host, pid, pid_start, _ = handle.split(":")
    return {"host": host, "pid": int(pid), "pid_start": float(pid_start)}


@dataclass
class _PackState:
    pack: Pack
    stop: threading.Event = field(default_factory=threading.Event)
    state: LiveState = "pending"
    codes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class LocalExecutor(Executor):
    kind = "local"

    def __init__(
        self, gpus: Sequence[str] | None = None, cpu_slots: int = 1, mps: bool = False, grace_s: float = STOP_GRACE_S
    ) -> None:
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        if cpu_slots < 1:
            raise ValueError(f"cpu_slots must be >= 1, got {cpu_slots}")
        self.cpu_slots, self.mps, self.grace_s = cpu_slots, mps, grace_s
        me = processes.identity()
        self._prefix = f"{PREFIX}:{me['host']}:{me['pid']}:{me['pid_start'] or 0:.2f}"
        self._packs: dict[str, _PackState] = {}
        self._lock = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def slots(self) -> list[str | None]:
        return list(self.gpus) if self.gpus else [None] * self.cpu_slots

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[str]:
        slots = self.slots
        free = list(slots)
        cpus = os.cpu_count() or 1
        self._pool = self._pool or ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="pack")
        handles = []

        def execute(handle: str) -> None:
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
                threads = None if slot is not None else max(1, cpus // (len(slots) * len(entry.pack)))
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

        for index, pack in enumerate(packs):
            handle = f"{self._prefix}:{submission.id}-{index}"
            self._packs[handle] = _PackState(list(pack))
            handles.append(handle)
            self._pool.submit(execute, handle)
        return handles

    def poll(self, handles: Sequence[str]) -> dict[str, SchedulerState]:
        out = {}
        for handle in handles:
            own = self._packs.get(handle)
            if own is not None:
                out[handle] = SchedulerState(own.state, own.error)
            else:
                out.update(poll_handles([handle]))
        return out

    def cancel(self, handles: Sequence[str]) -> None:
        """Stop own packs (queued ones never start) and wait until their processes are gone."""
        for handle in handles:
            if handle in self._packs:
                self._packs[handle].stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._pool is not None and all(p.stop.is_set() for p in self._packs.values()):
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self, handles: Sequence[str]) -> dict[str, object]:
        return {"launcher": processes.identity(), "slots": len(self.slots)}


def poll_handles(handles: Sequence[str]) -> dict[str, SchedulerState]:
    """Handles of another process's launch: a live launch owns its packs, queued or running."""
    return {h: SchedulerState("running" if processes.alive(launcher_of(h)) else "unknown") for h in handles}
