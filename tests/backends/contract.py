"""What every backend must do (deconcnn.backends.Backend), as one suite: a backend's test module
subclasses BackendContract and gives it a `harness` fixture (a Harness for that backend).

submit: one distinct handle of the backend's kind per pack; poll: pending -> running -> ended,
never back, never an exception; cancel: a running pack stops, a pending one never starts; attach:
a backend rebuilt from a saved handle polls it; a lost handle (never issued, or its submitter
gone) reads unknown; a double submit of the same packs gets new handles and runs again.

The packs hold stand-in runs (tests/support/gated.py): each writes `started` in its directory and
exits once its gate file exists, so a test holds a pack running as long as it needs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import gated
import pytest

from deconcnn.backends import Backend, Command, Handle, Pack, SchedulerState, Submission, registry

ORDER = {"pending": 0, "running": 1, "ended": 2, "unknown": 2}  # unknown: a scheduler that forgot an ended job


@contextmanager
def registered(cls: type[Backend]) -> Iterator[type[Backend]]:
    """A backend registered for the duration (launch, status and cancel find it by its kind)."""
    registry.register(cls)
    try:
        yield cls
    finally:
        registry.unregister(cls.kind)


class Harness:
    """How the suite drives one backend. The default plays the runs with real processes."""

    timeout_s = 60.0
    poll_s = 0.05

    def __init__(self, root: Path) -> None:
        self.root = root

    def backend(self) -> Backend:
        raise NotImplementedError

    def lost_handle(self) -> Handle:
        """A handle of this kind that no live submitter or scheduler knows."""
        raise NotImplementedError

    def packs(self, n: int) -> list[Pack]:
        packs = []
        for _ in range(n):
            name = f"run-{uuid.uuid4().hex[:8]}"
            packs.append([Command(name, "gated", (str(self.root / name),), str(self.root / name))])
        return packs

    def release(self, backend: Backend, handle: Handle, pack: Pack) -> None:
        """Let the pack's runs finish."""
        for command in pack:  # also before it started: it then ends as soon as it starts
            Path(command.workdir).mkdir(parents=True, exist_ok=True)
            Path(command.workdir, gated.GATE).touch()

    def started(self, backend: Backend, handle: Handle, pack: Pack) -> bool:
        return all(Path(c.workdir, gated.STARTED).exists() for c in pack)

    def slots(self, backend: Backend) -> int | None:
        """Packs the backend runs at once, where the test knows (a pack beyond them is pending)."""
        return backend.slots


def submission() -> Submission:
    return Submission(uuid.uuid4().hex[:12], "deconcnn-contract")


def poll_until(
    backend: Backend, handles: Sequence[Handle], done, harness: Harness, seen: dict | None = None
) -> dict[Handle, SchedulerState]:
    """Poll until done(states); every state seen is kept in `seen` (handle -> list of states)."""
    deadline = time.monotonic() + harness.timeout_s
    while True:
        states = backend.poll(list(handles))
        assert set(states) == set(handles)
        if seen is not None:
            for handle, state in states.items():
                if not seen[handle] or seen[handle][-1] != state.state:
                    seen[handle].append(state.state)
        if done(states):
            return states
        assert time.monotonic() < deadline, f"no such states in {harness.timeout_s} s: {states}"
        time.sleep(harness.poll_s)


def eventually(condition, harness: Harness) -> None:
    deadline = time.monotonic() + harness.timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {harness.timeout_s} s"
        time.sleep(0.05)


def ended(states: dict[Handle, SchedulerState]) -> bool:
    return all(s.state in ("ended", "unknown") for s in states.values())


class BackendContract:
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        raise NotImplementedError

    def test_submit_gives_one_distinct_handle_of_its_kind_per_pack(self, harness):
        backend = harness.backend()
        packs = harness.packs(3)
        handles = backend.submit(packs, submission())
        assert len(handles) == len(set(handles)) == 3
        assert all(isinstance(h, Handle) and h.kind == backend.kind for h in handles)
        json.dumps(backend.describe(handles))  # the manifest keeps it
        assert all(backend.log_of(h) is None or isinstance(backend.log_of(h), str) for h in handles)
        for handle, pack in zip(handles, packs):
            harness.release(backend, handle, pack)
        poll_until(backend, handles, ended, harness)

    def test_poll_goes_from_pending_to_running_to_ended_never_back(self, harness):
        backend = harness.backend()
        slots = harness.slots(backend)
        packs = harness.packs((slots or 1) + 1)
        handles = backend.submit(packs, submission())
        seen: dict[Handle, list[str]] = {h: [] for h in handles}
        first, last = handles[0], handles[-1]
        states = poll_until(backend, handles, lambda s: s[first].state == "running", harness, seen)
        if slots is not None:  # every slot taken: the last pack waits
            assert states[last].state == "pending"
        eventually(lambda: harness.started(backend, first, packs[0]), harness)  # its process starts
        for handle, pack in zip(handles, packs):
            harness.release(backend, handle, pack)
        poll_until(backend, handles, lambda s: all(x.state == "ended" for x in s.values()), harness, seen)
        for handle, states_seen in seen.items():
            assert states_seen == sorted(states_seen, key=ORDER.__getitem__), (handle, states_seen)
        # SLURM: a task squeue no longer lists and sacct has not recorded yet reads unknown for a moment
        assert [s for s in seen[first] if s != "unknown"][-2:] == ["running", "ended"]
        if slots is not None:
            assert seen[last][0] == "pending"

    def test_cancel_stops_a_running_pack_and_a_pending_one_never_starts(self, harness):
        backend = harness.backend()
        slots = harness.slots(backend)
        packs = harness.packs((slots or 1) + 1)
        handles = backend.submit(packs, submission())
        first, last = handles[0], handles[-1]
        states = poll_until(backend, handles, lambda s: s[first].state == "running", harness)
        backend.cancel(handles)
        poll_until(backend, handles, ended, harness)
        if slots is not None and states[last].state == "pending":
            assert not harness.started(backend, last, packs[-1])

    def test_a_backend_attached_to_a_saved_handle_polls_it(self, harness):
        backend = harness.backend()
        [pack] = harness.packs(1)
        [handle] = backend.submit([pack], submission())
        poll_until(backend, [handle], lambda s: s[handle].state == "running", harness)
        saved = Handle(**json.loads(json.dumps({"kind": handle.kind, "id": handle.id})))  # as a manifest keeps it
        attached = registry.attach(saved)
        assert attached.kind == backend.kind
        assert attached.poll([saved])[saved].state in ("pending", "running")
        harness.release(backend, handle, pack)
        poll_until(backend, [handle], ended, harness)

    def test_a_lost_handle_reads_unknown_and_raises_nothing(self, harness):
        backend = harness.backend()
        lost = harness.lost_handle()
        assert backend.poll([lost]) == {lost: SchedulerState("unknown")}
        assert registry.attach(lost).poll([lost]) == {lost: SchedulerState("unknown")}

    def test_a_double_submit_gets_new_handles_and_each_runs(self, harness):
        backend = harness.backend()
        packs = harness.packs(1)
        same = submission()
        first = backend.submit(packs, same)
        second = backend.submit(packs, same)
        assert not set(first) & set(second)
        for handle in (*first, *second):
            harness.release(backend, handle, packs[0])
        states = poll_until(backend, [*first, *second], ended, harness)
        assert all(s.state == "ended" for s in states.values())
