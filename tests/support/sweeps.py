"""Tiny sweep files for launch/status tests: `debug=smoke` runs (synthetic data, width 0.125, 4 steps)."""

from __future__ import annotations

import json
from pathlib import Path

from deconcnn.cli import run as sweep_cli

TINY_RUN = ["debug=smoke"]  # conf/debug/smoke.yaml: 4 steps on synthetic data, width 0.125
LOCAL_SLURM = [
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


def write_sweep(
    path: Path, *, seeds: str = "0,1", name: str = "tiny", extra: list[str] = (), variants: dict | None = None
) -> Path:
    """A sweep file: S-core (and whatever variants are given) x seeds, each run a few steps."""
    lines = [f"name: {name}", 'run_id: "{variant}_s{seed}"', "overrides:"]
    lines += [f"  - {o}" for o in [*TINY_RUN, *extra]]
    lines += ["axes:", f"  seed: {seeds}", "variants:"]
    for variant, body in (variants or {"S-core": {"experiment": "loss_lin_slope_base"}}).items():
        lines.append(f"  {variant}: {json.dumps(body)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def launch_json(*args: str) -> int:
    return sweep_cli(["launch", *map(str, args)])


def status_of(sweep_dir: Path, capsys) -> dict:
    capsys.readouterr()
    assert sweep_cli(["status", str(sweep_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)
