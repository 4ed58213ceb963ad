"""Exact resume: a run SIGKILLed anywhere and resumed is the run that was never interrupted.

Every scenario trains the same tiny monitored run (2 epochs x 16 steps, validation and a checkpoint
every 4 steps, curvature every 10 steps, noise every epoch) in a process of its own (forked, as the
pack runner starts a run on a CPU), kills it, resumes it with the same command, and compares the
whole metric log (every value but wall-clock times) and the final weights with an uninterrupted run.
The curvature records after a resume depend on the state the monitor carries (the previous record's
eigenvector, warm start, and its trace variance, which plans the probe count): they match only if
that state is checkpointed.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from runs import TINY, read_log, read_status, train_forked

STEPS = 32
MONITORED = [
    *TINY,
    "callbacks=loss_lin_slope_monitors",
    "callbacks.curvature_monitor.compute_every_n_steps=10",  # 0, 10, 20, 30: one before every kill, one after
    "callbacks.curvature_monitor.batch_size=8",
    "callbacks.curvature_monitor.warm_start=true",  # the warm-start vector must survive a resume
    "callbacks.noise_monitor.log_every_n_epochs=1",
    "callbacks.noise_monitor.grad_batch_size=8",
    "callbacks.noise_monitor.min_points=4",
    "callbacks.loss_slope_logger.flush_every_n_steps=3",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same kernels in every process, two processes at a time


def run(run_dir: Path, *extra: str) -> int:
    """The run in a process of its own, forked as the pack runner forks runs on a CPU: a kill -9
    ends that process alone, and the resume starts from nothing but the files."""
    log = run_dir.with_suffix(".log")
    return train_forked([*MONITORED, f"hydra.run.dir={run_dir}", *extra], log, env=ONE_THREAD)


def kill(step: int) -> list[str]:
    return ["+callbacks.kill._target_=fault_callbacks.KillAtStep", f"+callbacks.kill.step={step}"]


def comparable(records: list[dict]) -> list[dict]:
    """The log without what a clock measures; checkpoint sizes to the kilobyte (the metric log's
    resume position inside a checkpoint is a byte count that depends on the logged times)."""
    out = []
    for record in records:
        kept = {k: v for k, v in record.items() if k != "time" and not k.endswith("_seconds")}
        if record["kind"] == "checkpoint":
            kept["checkpoint_size_mb"] = round(record["checkpoint_size_mb"] * 1024)
        out.append(kept)
    return out


def assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = comparable(read_log(resumed)), comparable(read_log(reference))
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, float) and math.isfinite(value):
                assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g["kind"], g["step"], key)
            else:
                assert g[key] == value, (g["kind"], g["step"], key)
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def truncate_last(run_dir: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])


def garble_all(run_dir: Path) -> None:
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint" * 64)


SCENARIOS = {
    # name: (fault overrides, what to do to the files before resuming, expected resume step)
    "right after a checkpoint": (kill(8), None, 8),
    "mid-epoch between checkpoints": (kill(11), None, 8),
    "at an epoch boundary": (kill(16), None, 16),
    "during a checkpoint write": (
        ["+callbacks.kill._target_=fault_callbacks.KillDuringCheckpointWrite", "+callbacks.kill.step=12"],
        None,
        8,
    ),
    "last.ckpt half-truncated": (kill(11), truncate_last, 8),
    "every checkpoint garbage": (kill(11), garble_all, None),
}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("resume")
    reference = root / "reference"
    dirs = {name: root / f"s{i}" for i, name in enumerate(SCENARIOS)}

    def scenario(name: str) -> None:
        faults, damage, _ = SCENARIOS[name]
        assert run(dirs[name], *faults) == -9, name
        if damage is not None:
            damage(dirs[name])
        assert run(dirs[name]) == 0, (name, (dirs[name] / "run.json").read_text())

    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run, reference), *(pool.submit(scenario, name) for name in SCENARIOS)]
        assert jobs[0].result() == 0
        for job in jobs[1:]:
            job.result()
    return reference, dirs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resumed_run_equals_the_uninterrupted_run(resumed_runs, name):
    reference, dirs = resumed_runs
    assert_same_run(dirs[name], reference)
    train_steps = Counter(r["step"] for r in read_log(dirs[name]) if r["kind"] == "train")
    assert sorted(train_steps) == list(range(STEPS)) and set(train_steps.values()) == {1}
    status = read_status(dirs[name])
    assert status["status"] == "completed" and status["attempt"] == 2
    assert status["resumed_from_step"] == SCENARIOS[name][2]


@pytest.mark.slow
def test_damaged_checkpoints_are_named_in_run_json(resumed_runs):
    _, dirs = resumed_runs
    truncated = read_status(dirs["last.ckpt half-truncated"])
    assert truncated["resumed_from"].startswith("checkpoints/step000008")
    assert "last.ckpt does not load" in truncated["resume_note"]
    garbage = read_status(dirs["every checkpoint garbage"])
    assert garbage["resumed_from"] is None
    assert "started over from step 0" in garbage["resume_note"]
    during_write = read_status(dirs["during a checkpoint write"])
    assert during_write["resumed_from"] == "checkpoints/last.ckpt"
    leftovers = [
        p.name for p in (dirs["during a checkpoint write"] / "checkpoints").iterdir() if p.name.startswith(".")
    ]
    assert leftovers == []
