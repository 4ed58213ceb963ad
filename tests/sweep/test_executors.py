"""The local pool: one pack per GPU at a time via CUDA_VISIBLE_DEVICES; CPU slots split the cores."""

from __future__ import annotations

import threading
import time

from deconcnn.sweep import executors
from deconcnn.sweep.executors import LocalPool, RunTask, make_packs


def _tasks(n: int, variant: str = "S-core") -> list[RunTask]:
    return [RunTask(f"{variant}_s{i}", f"/tmp/{variant}_s{i}", ()) for i in range(n)]


def test_packs_group_k_runs_of_one_variant():
    packs = make_packs({"S-core": _tasks(5), "S-adamw": _tasks(2, "S-adamw")}, {"S-core": 2, "S-adamw": 3})
    assert [[t.run_id for t in p] for p in packs] == [
        ["S-core_s0", "S-core_s1"], ["S-core_s2", "S-core_s3"], ["S-core_s4"], ["S-adamw_s0", "S-adamw_s1"]]


def test_each_gpu_runs_one_pack_at_a_time(monkeypatch):
    busy: dict[str, int] = {}
    seen: list[tuple[str, list[str]]] = []
    lock = threading.Lock()

    def fake_run_pack(pack, threads_per_run=None, extra_env=None):
        gpu = extra_env["CUDA_VISIBLE_DEVICES"]
        with lock:
            busy[gpu] = busy.get(gpu, 0) + 1
            assert busy[gpu] == 1, f"two packs on GPU {gpu}"
            seen.append((gpu, [t.run_id for t in pack]))
        time.sleep(0.05)
        with lock:
            busy[gpu] -= 1
        return {t.run_id: 0 for t in pack}

    monkeypatch.setattr(executors, "run_pack", fake_run_pack)
    done = []
    packs = make_packs({"S-core": _tasks(6)}, {"S-core": 2})
    LocalPool(gpus=["0", "1"]).run(packs, on_done=lambda pack, codes: done.extend(codes))
    assert sorted(done) == sorted(t.run_id for t in _tasks(6))
    assert {gpu for gpu, _ in seen} == {"0", "1"} and all(len(runs) == 2 for _, runs in seen)


def test_cpu_slots_share_the_cores(monkeypatch):
    threads = []
    monkeypatch.setattr(executors, "run_pack", lambda pack, threads_per_run=None, extra_env=None:
                        threads.append((threads_per_run, extra_env["CUDA_VISIBLE_DEVICES"])) or {})
    monkeypatch.setattr(executors.os, "cpu_count", lambda: 8)
    LocalPool(gpus=[], cpu_slots=4).run([[t] for t in _tasks(4)], on_done=lambda pack, codes: None)
    assert threads == [(2, "")] * 4  # 8 cores / 4 concurrent runs; no GPU visible
