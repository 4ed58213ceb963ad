"""The in-process FakeBackend (tests/support/fake_backend.py) passes the contract suite, so the
sweep-layer tests that use it test what a real scheduler would do, with its faults one call away."""

from __future__ import annotations

import pytest
from contract import BackendContract, Harness, registered
from fake_backend import FakeBackend, FakeScheduler

from deconcnn.backends import Backend, Handle, Pack


class FakeHarness(Harness):
    poll_s = 0.0

    def backend(self) -> FakeBackend:
        return FakeBackend.create(self.root, {})

    def lost_handle(self) -> Handle:
        return Handle(FakeBackend.kind, "never-issued")

    def release(self, backend: Backend, handle: Handle, pack: Pack) -> None:
        FakeBackend.scheduler.finish(handle)

    def started(self, backend: Backend, handle: Handle, pack: Pack) -> bool:
        return FakeBackend.scheduler.started(handle) > 0

    def slots(self, backend: Backend) -> int:
        return FakeBackend.scheduler.slots


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(FakeBackend, "scheduler", FakeScheduler(slots=1))
    with registered(FakeBackend):
        yield FakeBackend.scheduler


class TestFakeBackend(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path, fake):
        return FakeHarness(tmp_path)
