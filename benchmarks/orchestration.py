"""Orchestration costs of the 216-run sweep: dry-run + validation, status, sbatch calls.

Plain script, no asserts: prints a markdown table. Goals: dry-run <= 5 s, status <= 1 s, one sbatch
call for the whole grid.
    python benchmarks/orchestration.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deconcnn.runconfig import CONF_DIR
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.sweep.executors import Command
from deconcnn.sweep.grid import plan
from deconcnn.sweep.launch import make_packs, new_manifest
from deconcnn.sweep.status import current_states
from deconcnn.sweep.sweepdir import code_version

SWEEP_FILE = CONF_DIR.parent / "sweeps" / "loss_lin_slope.yaml"
MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize


def cli_seconds(*args: str) -> float:
    """Wall time of a fresh `deconcnn-sweep` process, interpreter start-up included."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deconcnn.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def fabricate_sweep(root: Path) -> Path:
    """A 216-run sweep directory with a realistic mix of run states (no scheduler needed)."""
    launch_plan = plan(SWEEP_FILE, out=root)
    sweep_dir = launch_plan.sweep_dir
    manifest = new_manifest(launch_plan.sweep, code_version())
    rng = random.Random(0)
    for run_id, entry in manifest["runs"].items():
        entry["attempts"] = 1
        entry["submissions"].append(
            {"id": "bench", "executor": "local", "time": time.time(), "handle": "local:gone:1:0.00:bench-0"}
        )
        state = rng.choice(["completed"] * 6 + ["failed", "diverged", None])
        if state:
            run_dir = sweep_dir.run_dir(run_id)
            run_dir.mkdir(parents=True)
            write_json_atomic(
                run_dir / "run.json",
                {
                    "run_id": run_id,
                    "status": state,
                    "end_time": time.time(),
                    "submission_id": "bench",
                    "error": "RuntimeError: x" if state == "failed" else None,
                    "diverged_step": 123 if state == "diverged" else None,
                },
            )
    sweep_dir.write_manifest(manifest)
    return sweep_dir.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = fabricate_sweep(Path(tmp))
        dry = [
            cli_seconds("launch", str(SWEEP_FILE), "--executor", "local", "--dry-run", "--out", tmp)
            for _ in range(args.repeats)
        ]
        status_cli = [cli_seconds("status", str(sweep_dir), "--json") for _ in range(args.repeats)]
        status_fn = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            current_states(sweep_dir)
            status_fn.append(time.perf_counter() - start)
    runs = plan(SWEEP_FILE, out="/tmp").runs
    tmp_root = tempfile.gettempdir()
    rows = []
    for k in (1, 2, 4):
        by_variant: dict[str, list[Command]] = {}
        for run in runs:
            by_variant.setdefault(run.variant, []).append(run.command(Path(tmp_root) / run.run_id))
        packs = make_packs(by_variant, dict.fromkeys(by_variant, k))
        rows.append((k, len(packs), -(-len(packs) // MAX_ARRAY_SIZE)))
    print("| measurement (216 runs) | median | goal |")
    print("|---|---|---|")
    dry_s = statistics.median(dry)
    print(f"| `launch --dry-run` (expand + compose + check every run), process | {dry_s:.2f} s | <= 5 s |")
    print(f"| `status --json`, process (216 run.json files) | {statistics.median(status_cli):.2f} s | <= 1 s |")
    print(f"| status computation alone, in process | {statistics.median(status_fn) * 1000:.0f} ms | |")
    for k, packs, calls in rows:
        print(
            f"| sbatch calls at k={k} runs per GPU ({packs} array tasks, MaxArraySize {MAX_ARRAY_SIZE}) | {calls} | 1 |"
        )


if __name__ == "__main__":
    main()
