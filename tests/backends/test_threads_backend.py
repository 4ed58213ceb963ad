"""A new backend in one file plus one registry line: a toy that runs each pack in a thread of this
process, through the same pack runner as the local backend, and passes the contract suite."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from contract import BackendContract, Harness, registered

from deconcnn.backends import STOP_GRACE_S, Backend, Handle, Pack, SchedulerState, Submission
from deconcnn.backends.journal import Journal
from deconcnn.backends.runner import run_pack

SUPPORT = Path(__file__).resolve().parents[1] / "support"


class ThreadPoolBackend(Backend):
    kind = "threads"
    detached = False  # its packs live in this process: a launch waits for them

    def __init__(self, slots: int = 1, grace_s: float = STOP_GRACE_S) -> None:
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix="toy-pack")
        self.width, self.grace_s = slots, grace_s
        self.futures: dict[Handle, Future[dict[str, int]]] = {}
        self.stops: dict[Handle, threading.Event] = {}

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
    ) -> ThreadPoolBackend:
        return cls(slots, grace_s)

    @classmethod
    def attach(cls, handle: Handle) -> ThreadPoolBackend:
        return _submitters.get(handle.id.split("-")[0]) or cls()  # another process's packs: unknown

    @property
    def slots(self) -> int:
        return self.width

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[Handle]:
        _submitters[str(id(self))] = self
        handles = []
        for pack in packs:
            handle = Handle(self.kind, f"{id(self)}-{len(self.futures)}")
            self.stops[handle] = stop = threading.Event()
            self.futures[handle] = self.pool.submit(run_pack, pack, submission, stop=stop, grace_s=self.grace_s)
            handles.append(handle)
        return handles

    def poll(self, handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
        out = {}
        for handle in handles:
            future = self.futures.get(handle)
            state = (
                "unknown"
                if future is None
                else "ended"
                if future.done()
                else "running"
                if future.running()
                else "pending"
            )
            out[handle] = SchedulerState(state)
        return out

    def cancel(self, handles: Sequence[Handle]) -> None:
        for handle in handles:
            if handle in self.futures and not self.futures[handle].cancel():  # a pending one never starts
                self.stops[handle].set()


_submitters: dict[str, ThreadPoolBackend] = {}  # the backends of this process, for attach


class ThreadsHarness(Harness):
    def backend(self) -> ThreadPoolBackend:
        return ThreadPoolBackend.create(self.root, {}, slots=1, grace_s=5.0)

    def lost_handle(self) -> Handle:
        return Handle(ThreadPoolBackend.kind, "0-0")


class TestThreadPoolBackend(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
        with registered(ThreadPoolBackend):  # the one registry line (an installed plugin: an entry point)
            yield ThreadsHarness(tmp_path)
