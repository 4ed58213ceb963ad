"""An in-process backend whose scheduler a test drives, with every fault one call.

    FakeBackend.scheduler = FakeScheduler(slots=2)  # shared by every FakeBackend (attach, status)
    fake = FakeBackend.scheduler
    fake.finish(handle, "COMPLETED")   # or FAILED, CANCELLED, TIMEOUT, NODE_FAIL: it ended so
    fake.requeue(handle)               # running -> pending, as a preempted or requeued task
    fake.lose(handle)                  # the scheduler forgets it (purged accounting): unknown
    fake.down("connection refused")    # the controller does not answer until fake.up()
    fake.refuse("QOSMaxSubmitJobPerUserLimit", after=1)  # the next submit takes `after` packs
    fake.room = 3                      # the site's job limit: packs it lets this user queue now

A pending pack starts at a poll when a slot is free. Nothing runs: it is detached like a cluster
scheduler (a launch returns at once), and a test plays the runs' part by writing their files.
Register it for launch/status/cancel with `registered(FakeBackend)` (tests/backends/contract.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deconcnn.backends import Backend, BackendError, Handle, Pack, SchedulerState, Submission
from deconcnn.backends.base import STOP_GRACE_S, LiveState
from deconcnn.backends.journal import Journal

KIND = "fake"


@dataclass
class FakeJob:
    pack: list[str]
    state: LiveState = "pending"
    detail: str | None = "Priority"
    since: float | None = None
    started: int = 0  # how many times it started (a requeue starts it again)


@dataclass
class FakeScheduler:
    slots: int = 1
    room: int | None = None
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # every submit, poll and cancel, in order
    _down: str | None = None
    _refusal: tuple[str, int] | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(100))

    # ---- faults

    def finish(self, handle: Handle, detail: str = "COMPLETED") -> None:
        job = self.jobs[handle.id]
        job.state, job.detail = "ended", detail

    def requeue(self, handle: Handle) -> None:
        job = self.jobs[handle.id]
        job.state, job.detail = "pending", "BeginTime"

    def lose(self, handle: Handle) -> None:
        del self.jobs[handle.id]

    def down(self, reason: str = "connection refused") -> None:
        self._down = reason

    def up(self) -> None:
        self._down = None

    def refuse(self, reason: str, after: int = 0) -> None:
        self._refusal = (reason, after)

    def started(self, handle: Handle) -> int:
        return self.jobs[handle.id].started

    # ---- what the backend asks

    def tick(self) -> None:
        """Pending packs start while slots are free, in submission order."""
        running = sum(j.state == "running" for j in self.jobs.values())
        for job in self.jobs.values():
            if running >= self.slots:
                break
            if job.state == "pending":
                job.state, job.detail, job.since = "running", "RUNNING", time.time()
                job.started += 1
                running += 1


class FakeBackend(Backend):
    kind = KIND
    detached = True
    watch_min_s = 0.0
    plan_where = "the fake scheduler"
    scheduler = FakeScheduler()

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
    ) -> FakeBackend:
        return cls()

    @classmethod
    def attach(cls, handle: Handle) -> FakeBackend:
        return cls()

    def _check_up(self) -> None:
        if self.scheduler._down:
            raise BackendError(f"fake scheduler: {self.scheduler._down}")

    def room(self) -> tuple[int | None, str]:
        return self.scheduler.room, "the fake's room"

    def submit(self, packs: Sequence[Pack], submission: Submission) -> list[Handle]:
        self._check_up()
        self.scheduler.calls.append("submit")
        refusal, self.scheduler._refusal = self.scheduler._refusal, None
        if refusal and refusal[1] == 0:
            raise BackendError(f"fake scheduler refused the submission: {refusal[0]}")
        taken = packs[: refusal[1]] if refusal else packs
        handles = []
        for pack in taken:
            handle = Handle(KIND, str(next(self.scheduler._ids)))
            self.scheduler.jobs[handle.id] = FakeJob([c.name for c in pack])
            handles.append(handle)
        if refusal:
            self.stopped_by = refusal[0]
        return handles

    def poll(self, handles: Sequence[Handle]) -> dict[Handle, SchedulerState]:
        self.scheduler.calls.append("poll")
        if self.scheduler._down:
            return dict.fromkeys(handles, SchedulerState("unreachable", self.scheduler._down))
        self.scheduler.tick()
        out = {}
        for handle in handles:
            job = self.scheduler.jobs.get(handle.id)
            out[handle] = SchedulerState(job.state, job.detail, job.since) if job else SchedulerState("unknown")
        return out

    def cancel(self, handles: Sequence[Handle]) -> None:
        self._check_up()
        self.scheduler.calls.append("cancel")
        for handle in handles:
            job = self.scheduler.jobs.get(handle.id)
            if job is not None and job.state != "ended":
                job.state, job.detail = "ended", "CANCELLED"

    def describe(self, handles: Sequence[Handle]) -> dict[str, Any]:
        return {"fake_ids": [h.id for h in handles]}
