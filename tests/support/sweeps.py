"""Tiny sweep files for launch/status tests: `debug=smoke` runs (synthetic data, width 0.125, 4 steps)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from deconcnn.cli import run as sweep_cli
from deconcnn.sweep.check.rules import CHECK_CURVATURE_BATCH, CURVATURE, NOISE

TINY_RUN = ["debug=smoke"]  # conf/debug/smoke.yaml: 4 steps on synthetic data, width 0.125
# The monitors' batches shrunk as the pre-launch check shrinks them (cost, not schedule): the
# curvature record at step 0 is most of a smoke run's training CPU, ~6 CPU-s on the 64 samples
# smoke leaves it, ~12 on 128, ~2 on 8.
SMALL_MONITORS = [
    f"callbacks.{CURVATURE}.batch_size={CHECK_CURVATURE_BATCH}",
    f"callbacks.{NOISE}.grad_batch_size={CHECK_CURVATURE_BATCH}",
]
LOCAL_SLURM = [
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
# One fake GPU per task (the node has gpu:2, File=/dev/null,/dev/zero), so SLURM sets
# CUDA_VISIBLE_DEVICES; torch finds no CUDA there and trains on the CPU.
ONE_GPU_TASK = [o for o in LOCAL_SLURM if "gpus_per_node" not in o] + ["hydra.launcher.gpus_per_node=1"]
# Two runs per array task, on that one GPU.
PACKED = ("--workers-per-gpu", "2", *ONE_GPU_TASK)


def write_sweep(
    path: Path,
    *,
    seeds: str = "0,1",
    name: str = "tiny",
    extra: list[str] = (),
    variants: dict | None = None,
    monitors: bool = True,
) -> Path:
    """A sweep file: S-core (and whatever variants are given) x seeds, each run a few steps; with
    `monitors` (the runs' callbacks have them), their batches are SMALL_MONITORS'."""
    lines = [f"name: {name}", 'run_id: "{variant}_s{seed}"', "overrides:"]
    lines += [f"  - {o}" for o in [*TINY_RUN, *(SMALL_MONITORS if monitors else ()), *extra]]
    lines += ["axes:", f"  seed: {seeds}", "variants:"]
    for variant, body in (variants or {"S-core": {"experiment": "loss_lin_slope_base"}}).items():
        lines.append(f"  {variant}: {json.dumps(body)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with a hash of its contents (directories as '/')."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def refused(capsys, argv: list[str], out: Path, expected: str) -> None:
    """The command exits 2 with one line saying `expected`, and nothing under `out` changed."""
    before = snapshot(out)
    capsys.readouterr()
    assert sweep_cli([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("deconcnn-sweep: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + captured.out
    assert expected in err, err
    assert snapshot(out) == before


def launch_json(*args: str) -> int:
    return sweep_cli(["launch", *map(str, args)])


def slurm_launch(sweep_file: Path, out: Path, *extra: str) -> int:
    """`launch --executor slurm` of a test sweep; `extra` are options or launcher overrides (or PACKED)."""
    launcher = [] if "--workers-per-gpu" in extra else LOCAL_SLURM
    return launch_json(sweep_file, "--executor", "slurm", "--skip-check", "--out", out, *launcher, *extra)


def status_of(sweep_dir: Path, capsys) -> dict:
    capsys.readouterr()
    assert sweep_cli(["status", str(sweep_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 240, interval: float = 0.5) -> T:
    """`check()`'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def settle(sweep_dir: Path, capsys, timeout: float = 240) -> dict:
    """`status --json` once no run is pending, running or unknown."""

    def settled() -> dict | None:
        status = status_of(sweep_dir, capsys)
        return status if not {"pending", "running", "unknown"} & {r["state"] for r in status["runs"]} else None

    return wait_for("the sweep to settle", settled, timeout=timeout, interval=1.0)


def states_of(status: dict) -> dict[str, str]:
    return {r["run_id"]: r["state"] for r in status["runs"]}


def train_steps(run_dir: Path) -> list[int]:
    """The steps of the run's train records so far (a line being written is skipped)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            steps.append(record["step"])
    return steps
