"""The local backend: the contract suite (real processes on this machine, one slot); one pack per
GPU at a time via CUDA_VISIBLE_DEVICES; CPU slots split the cores; handles that name a live or dead
launch; cancel stops queued and running packs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from contract import BackendContract, Harness

from deconcnn.backends import Command, Handle, SchedulerState, Submission, wait
from deconcnn.backends import local as local_module
from deconcnn.backends.local import LocalBackend, poll_handles
from deconcnn.sweep.launch import make_packs

SUPPORT = Path(__file__).resolve().parents[1] / "support"


class LocalHarness(Harness):
    def backend(self) -> LocalBackend:
        return LocalBackend.create(self.root / "slurm", {}, slots=1, grace_s=5.0)

    def lost_handle(self) -> Handle:
        """A handle of a launch that is gone: its process has exited."""
        code = "from deconcnn.backends.local import LocalBackend; print(LocalBackend(gpus=[])._prefix)"
        prefix = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        return Handle(LocalBackend.kind, prefix.strip() + ":s1-0")


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
        return LocalHarness(tmp_path)


SUBMISSION = Submission("s1", "test")


def _commands(n: int, variant: str = "S-core") -> list[Command]:
    return [Command(f"{variant}_s{i}", "m", (), f"/tmp/{variant}_s{i}") for i in range(n)]


def test_each_gpu_runs_one_pack_at_a_time(monkeypatch):
    busy: dict[str, int] = {}
    seen: list[tuple[str, list[str]]] = []
    lock = threading.Lock()

    def fake_run_pack(pack, submission, threads_per_run=None, extra_env=None, stop=None, grace_s=0):
        gpu = extra_env["CUDA_VISIBLE_DEVICES"]
        with lock:
            busy[gpu] = busy.get(gpu, 0) + 1
            assert busy[gpu] == 1, f"two packs on GPU {gpu}"
            seen.append((gpu, [c.name for c in pack]))
        time.sleep(0.05)
        with lock:
            busy[gpu] -= 1
        return {c.name: 0 for c in pack}

    monkeypatch.setattr(local_module, "run_pack", fake_run_pack)
    backend = LocalBackend(gpus=["0", "1"])
    handles = backend.submit(make_packs({"S-core": _commands(6)}, {"S-core": 2}), SUBMISSION)
    done = wait(backend, handles, poll_s=0.01)
    assert set(done) == set(handles) and all(s.state == "ended" for s in done.values())
    assert {gpu for gpu, _ in seen} == {"0", "1"} and sorted(len(runs) for _, runs in seen) == [2, 2, 2]


@pytest.mark.parametrize(
    ("omp_num_threads", "each"),
    [(None, 2), ("1", 1), ("8", 2), ("abc", 2), ("0", 2)],  # a set count caps the share, never raises it
)
def test_cpu_slots_share_the_cores(monkeypatch, omp_num_threads, each):
    if omp_num_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_num_threads)
    threads = []
    monkeypatch.setattr(
        local_module,
        "run_pack",
        lambda pack, submission, threads_per_run=None, extra_env=None, stop=None, grace_s=0: (
            threads.append((threads_per_run, extra_env["CUDA_VISIBLE_DEVICES"])) or {}
        ),
    )
    monkeypatch.setattr(local_module.os, "cpu_count", lambda: 8)
    backend = LocalBackend(gpus=[], cpu_slots=4)
    wait(backend, backend.submit([[c] for c in _commands(4)], SUBMISSION), poll_s=0.01)
    assert threads == [(each, "")] * 4  # 8 cores / 4 concurrent runs; no GPU visible


def test_cancel_stops_running_packs_and_queued_ones_never_start(monkeypatch):
    started = []

    def fake_run_pack(pack, submission, threads_per_run=None, extra_env=None, stop=None, grace_s=0):
        started.append(pack[0].name)
        assert stop is not None and stop.wait(5)  # runs until stopped
        return {}

    monkeypatch.setattr(local_module, "run_pack", fake_run_pack)
    backend = LocalBackend(gpus=[], cpu_slots=1)
    handles = backend.submit([[c] for c in _commands(3)], SUBMISSION)
    while not started:
        time.sleep(0.01)
    assert [s.state for s in backend.poll(handles).values()] == ["running", "pending", "pending"]
    backend.cancel(handles)
    assert [s.state for s in backend.poll(handles).values()] == ["ended"] * 3
    assert started == ["S-core_s0"]


def test_another_process_reads_a_handle_as_owned_while_its_launch_lives(tmp_path):
    backend = LocalBackend(gpus=[])
    handle = Handle(LocalBackend.kind, backend._prefix + ":s1-0")  # what this process's launch would hand out
    assert poll_handles([handle]) == {handle: SchedulerState("running")}
    dead = LocalHarness(tmp_path).lost_handle()
    assert poll_handles([dead]) == {dead: SchedulerState("unknown")}
