"""Helpers shared by tests that train real (tiny) runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from deconcnn.runconfig import CONF_DIR, compose_run_config

REPO = CONF_DIR.parent
SUPPORT = Path(__file__).resolve().parent

# conf/debug/tiny.yaml: 16 steps per epoch of batch 8 on synthetic data, width 0.125, 2 epochs: a few
# seconds per epoch on 2 cores; validation every 0.25 epoch as in the experiment.
TINY = ["debug=tiny", "trainer.val_check_interval=0.25"]


def compose_run(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    return compose_run_config([*TINY, f"run_dir={run_dir}", *overrides])


def train_cli(
    args: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """deconcnn-train in a fresh process, as a user (or SLURM) would start it."""
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "deconcnn.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())
