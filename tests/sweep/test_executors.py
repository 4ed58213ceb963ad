"""The local executor: one pack per GPU at a time via CUDA_VISIBLE_DEVICES; CPU slots split the
cores; handles that name a live or dead launch; cancel stops queued and running packs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from deconcnn.sweep.executors import Command, SchedulerState, Submission, wait
from deconcnn.sweep.executors import local as local_module
from deconcnn.sweep.executors.local import LocalExecutor, poll_handles
from deconcnn.sweep.launch import make_packs

SUBMISSION = Submission("s1", "test")


def _commands(n: int, variant: str = "S-core") -> list[Command]:
    return [Command(f"{variant}_s{i}", "m", (), f"/tmp/{variant}_s{i}") for i in range(n)]


def test_packs_group_k_runs_of_one_variant():
    packs = make_packs({"S-core": _commands(5), "S-adamw": _commands(2, "S-adamw")}, {"S-core": 2, "S-adamw": 3})
    assert [[c.name for c in p] for p in packs] == [
        ["S-core_s0", "S-core_s1"],
        ["S-core_s2", "S-core_s3"],
        ["S-core_s4"],
        ["S-adamw_s0", "S-adamw_s1"],
    ]


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
    executor = LocalExecutor(gpus=["0", "1"])
    handles = executor.submit(make_packs({"S-core": _commands(6)}, {"S-core": 2}), SUBMISSION)
    done = wait(executor, handles, poll_s=0.01)
    assert set(done) == set(handles) and all(s.state == "ended" for s in done.values())
    assert {gpu for gpu, _ in seen} == {"0", "1"} and sorted(len(runs) for _, runs in seen) == [2, 2, 2]


def test_cpu_slots_share_the_cores(monkeypatch):
    threads = []
    monkeypatch.setattr(
        local_module,
        "run_pack",
        lambda pack, submission, threads_per_run=None, extra_env=None, stop=None, grace_s=0: (
            threads.append((threads_per_run, extra_env["CUDA_VISIBLE_DEVICES"])) or {}
        ),
    )
    monkeypatch.setattr(local_module.os, "cpu_count", lambda: 8)
    executor = LocalExecutor(gpus=[], cpu_slots=4)
    wait(executor, executor.submit([[c] for c in _commands(4)], SUBMISSION), poll_s=0.01)
    assert threads == [(2, "")] * 4  # 8 cores / 4 concurrent runs; no GPU visible


def test_cancel_stops_running_packs_and_queued_ones_never_start(monkeypatch):
    started = []

    def fake_run_pack(pack, submission, threads_per_run=None, extra_env=None, stop=None, grace_s=0):
        started.append(pack[0].name)
        assert stop is not None and stop.wait(5)  # runs until stopped
        return {}

    monkeypatch.setattr(local_module, "run_pack", fake_run_pack)
    executor = LocalExecutor(gpus=[], cpu_slots=1)
    handles = executor.submit([[c] for c in _commands(3)], SUBMISSION)
    while not started:
        time.sleep(0.01)
    assert [s.state for s in executor.poll(handles).values()] == ["running", "pending", "pending"]
    executor.cancel(handles)
    assert [s.state for s in executor.poll(handles).values()] == ["ended"] * 3
    assert started == ["S-core_s0"]


def test_another_process_reads_a_handle_as_owned_while_its_launch_lives():
    executor = LocalExecutor(gpus=[])
    handle = executor._prefix + ":s1-0"  # what this process's launch would hand out
    assert poll_handles([handle]) == {handle: SchedulerState("running")}
    gone = subprocess.run(
        [
            sys.executable,
            "-c",
            "from deconcnn.sweep.executors.local import LocalExecutor;print(LocalExecutor(gpus=[])._prefix)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = gone.stdout.strip() + ":s1-0"
    assert poll_handles([dead]) == {dead: SchedulerState("unknown")}
