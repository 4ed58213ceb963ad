"""Orchestration costs at 216, 2,000, 10,000 and 50,000 runs, against a recording stand-in for SLURM.

Plain script, no asserts: prints a markdown table. Per size: CPU seconds (user+sys, interpreter
start-up and imports included: what a user pays), peak memory (max RSS) and the number of
scheduler commands, for `launch --dry-run`, `launch`, `status --json` (twice: the first reads every
finished run's run.json and caches it, the second stats them: deconcnn.sweep.state_cache), and a
relaunch after 95% of the runs completed and 5% failed. Each operation runs in a fresh process. The scheduler is
tests/support/fake_slurm.py (sbatch, squeue, sacct, ... recording each call); its own CPU is not
counted. The sweep is the loss_lin_slope grid (4 variants x 3 LR x 3 WD) with as many seeds as
the size needs.

Goals at 50,000 runs: status <= 3 CPU-s with <= 5 scheduler calls; dry-run <= 1.5 ms of CPU per
run; a relaunch that submits 5% costs at most 2x that share of a launch.

    nice -n 5 python benchmarks/orchestration.py [--sizes 216 2000 10000 50000]
    ORCHESTRATION_PROFILE_DIR=/tmp/p nice -n 5 python benchmarks/orchestration.py --sizes 10000  # + cProfile per op
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

import fake_slurm  # noqa: E402

GRID = 36  # 4 variants x 3 LR x 3 WD
LAUNCHER = ["hydra.launcher.gpus_per_node=1", "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=16"]
OPS = ("dry-run", "launch", "status", "status-again", "relaunch")


def write_sweep(path: Path, runs: int) -> Path:
    seeds = math.ceil(runs / GRID)
    text = (REPO / "sweeps" / "loss_lin_slope.yaml").read_text().replace("range(0,6)", f"range(0,{seeds})")
    path.write_text(text.replace("name: loss_lin_slope", f"name: bench{runs}"))
    return path


def measure(op: str, sweep_file: Path, out: Path) -> dict[str, float]:
    """Run one operation in this (fresh) process; its CPU seconds and peak RSS (and its profile in
    $ORCHESTRATION_PROFILE_DIR/<op>.prof when that is set: the child must stay this script, with
    this sys.path, or a relaunch would not reuse the launch's validation record)."""
    import cProfile

    from deconcnn.cli import run

    launch = ["launch", str(sweep_file), "--executor", "slurm", "--out", str(out), *LAUNCHER]
    argv = {
        "dry-run": [*launch, "--dry-run"],
        "launch": [*launch, "--skip-check", "--quiet"],
        "relaunch": [*launch, "--skip-check", "--quiet"],
        "status": ["status", str(out / f"bench{sweep_file.stem}"), "--json"],
    }[op.removesuffix("-again")]
    profile_dir = os.environ.get("ORCHESTRATION_PROFILE_DIR")
    profile = cProfile.Profile() if profile_dir else None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = profile.runcall(run, argv) if profile else run(argv)
    if profile:
        profile.dump_stats(os.path.join(profile_dir, f"{op}.prof"))
    if code != 0:
        raise SystemExit(f"{op} failed: {err.getvalue()}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def finish_95_percent(sweep_dir: Path, root: Path) -> int:
    """Every task ends; 95% of the runs wrote run.json completed, the other 5% nothing (failed)."""
    from deconcnn.runlog.atomic import write_json_atomic
    from deconcnn.sweep.sweepdir import SweepDir

    fake_slurm.end_all(root)
    manifest = SweepDir(sweep_dir).require_manifest()
    failed = 0
    for i, (run_id, entry) in enumerate(sorted(manifest.runs.items())):
        if i % 20 == 0:
            failed += 1
            continue
        run_dir = sweep_dir / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        sid = entry.submissions[-1].id
        write_json_atomic(run_dir / "run.json", {"run_id": run_id, "status": "completed", "submission_id": sid})
    return failed


def child(op: str, sweep_file: Path, out: Path) -> dict[str, float]:
    calls = Path(os.environ["FAKE_SLURM_ROOT"]) / fake_slurm.CALLS
    before = len(calls.read_text().splitlines())
    cmd = [sys.executable, __file__, "--child", op, str(sweep_file), str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr or proc.stdout)
    result = json.loads(proc.stdout.splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    result["calls"] = len(calls.read_text().splitlines()) - before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[216, 2000, 10000, 50000])
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="operations (status and relaunch need launch)"
    )
    parser.add_argument("--child", nargs=3, metavar=("OP", "SWEEP_FILE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, sweep_file, out = args.child
        print(json.dumps(measure(op, Path(sweep_file), Path(out))))
        return
    print("| runs | operation | CPU s | CPU ms/run | peak MB | scheduler calls | wall s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    summary = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "slurm"
            bin_dir = fake_slurm.install(root, max_job_count=10**6)
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
            os.environ["FAKE_SLURM_ROOT"] = str(root)
            sweep_file = write_sweep(Path(tmp) / f"{size}.yaml", size)
            runs = GRID * math.ceil(size / GRID)
            out = Path(tmp) / "out"
            results = {}
            for op in args.ops:
                if op == "status":
                    finish_95_percent(out / f"bench{size}", root)
                results[op] = child(op, sweep_file, out)
                r = results[op]
                print(
                    f"| {runs} | {op} | {r['cpu_s']:.2f} | {1000 * r['cpu_s'] / runs:.3f} | {r['peak_mb']:.0f} "
                    f"| {r['calls']} | {r['wall_s']:.1f} |",
                    flush=True,
                )
            os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
            summary.append((runs, results))
    print()
    print(
        "| runs | dry-run ms/run (goal <= 1.5) | status CPU s (goal <= 3) | status again CPU s "
        "| status calls (goal <= 5) | relaunch of 5% / (5% of launch) (goal <= 2) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for runs, results in summary:
        dry = f"{1000 * results['dry-run']['cpu_s'] / runs:.2f}" if "dry-run" in results else "-"
        status = results.get("status", {})
        share = "-"
        if "relaunch" in results:
            share = f"{results['relaunch']['cpu_s'] / (0.05 * results['launch']['cpu_s']):.2f}"
        again = results.get("status-again", {}).get("cpu_s", float("nan"))
        print(
            f"| {runs} | {dry} | {status.get('cpu_s', float('nan')):.2f} | {again:.2f} "
            f"| {status.get('calls', '-')} | {share} |"
        )


if __name__ == "__main__":
    main()
