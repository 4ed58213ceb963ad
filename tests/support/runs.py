"""Helpers shared by tests that train real (tiny) runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from deconcnn.backends import Command, preloaded
from deconcnn.backends.pack import TRAIN_MODULE
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


def start_forked(args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> preloaded.ForkedRun:
    """deconcnn-train forked from the preloaded server, as the pack runner starts a run on a CPU
    (tests/backends/test_preloaded.py holds such a fork to a fresh process), for tests of what a run
    does rather than of its command line: the ~6 CPU-s import of torch and Lightning is paid once per
    test process instead of once per run. Its stdout and stderr go to `log`."""
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), **(env or {})}
    run = preloaded.start(Command(log.stem, TRAIN_MODULE, tuple(args), str(log.parent)), env, log)
    assert run is not None, "the preloaded server did not start"
    return run


def wait_forked(run: preloaded.ForkedRun, timeout: float = 300) -> int:
    """The run's exit code; a run still going after `timeout` seconds is killed and fails the test."""
    try:
        return run.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError(f"a forked deconcnn-train (pid {run.pid}) still ran after {timeout} s") from None


def train_forked(args: Sequence[str], log: Path, timeout: float = 300, env: dict[str, str] | None = None) -> int:
    """start_forked, then wait_forked."""
    return wait_forked(start_forked(args, log, env), timeout)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())
