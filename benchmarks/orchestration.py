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
run; a relaunch that submits 5% costs at most 2x that share of a launch. Each size is measured on
--repeat fresh sweeps (3), and the goals are read from the medians: one launch's CPU swings by up
to 2x between runs of the same code on a 2-core VM.

    nice -n 5 python benchmarks/orchestration.py [--sizes 216 2000 10000 50000] [--repeat 3]
    ORCHESTRATION_PROFILE_DIR=/tmp/p nice -n 5 python benchmarks/orchestration.py --sizes 10000  # + cProfile per op
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import resource
import statistics
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


def one_sweep(size: int, ops: list[str], tmp: Path) -> dict[str, dict[str, float]]:
    """Each operation on a fresh sweep of `size` runs, in order, against a stand-in of its own."""
    root = tmp / "slurm"
    bin_dir = fake_slurm.install(root, max_job_count=10**6)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    os.environ["FAKE_SLURM_ROOT"] = str(root)
    try:
        sweep_file = write_sweep(tmp / f"{size}.yaml", size)
        out = tmp / "out"
        results = {}
        for op in ops:
            if op == "status":
                finish_95_percent(out / f"bench{size}", root)
            results[op] = child(op, sweep_file, out)
        return results
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]


def median_cell(
    sweeps: list[dict[str, dict[str, float]]], op: str, key: str = "cpu_s", scale: float = 1.0, digits: int = 2
) -> str:
    """The median of one measure over the sweeps, with its range."""
    values = [s[op][key] * scale for s in sweeps if op in s]
    if not values:
        return "-"
    spread = f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.{digits}f}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[216, 2000, 10000, 50000])
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="operations (status and relaunch need launch)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh sweeps per size; the goals use the medians")
    parser.add_argument("--child", nargs=3, metavar=("OP", "SWEEP_FILE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.child:
        op, sweep_file, out = args.child
        print(json.dumps(measure(op, Path(sweep_file), Path(out))))
        return
    print("| runs | sweep | operation | CPU s | CPU ms/run | peak MB | scheduler calls | wall s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    summary = []
    for size in args.sizes:
        runs = GRID * math.ceil(size / GRID)
        sweeps = []
        for rep in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory() as tmp:
                sweeps.append(one_sweep(size, args.ops, Path(tmp)))
            for op, r in sweeps[-1].items():
                print(
                    f"| {runs} | {rep} | {op} | {r['cpu_s']:.2f} | {1000 * r['cpu_s'] / runs:.3f} "
                    f"| {r['peak_mb']:.0f} | {r['calls']} | {r['wall_s']:.1f} |",
                    flush=True,
                )
        summary.append((runs, sweeps))
    print()
    print(
        f"Medians of {args.repeat} sweeps per size (the range in brackets). The launch's CPU swings by up to "
        "2x between runs of the same code here (its system time: it writes files for every run), so the ratio "
        "is the median relaunch over 5% of the median launch; the range is each sweep's own ratio."
    )
    print()
    print(
        "| runs | dry-run ms/run (goal <= 1.5) | status CPU s (goal <= 3) | status again CPU s "
        "| status calls (goal <= 5) | relaunch of 5% / (5% of launch) (goal <= 2) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for runs, sweeps in summary:
        cell = functools.partial(median_cell, sweeps)
        ratio = "-"
        if all("relaunch" in s and "launch" in s for s in sweeps):
            each = [s["relaunch"]["cpu_s"] / (0.05 * s["launch"]["cpu_s"]) for s in sweeps]
            medians = [statistics.median(s[op]["cpu_s"] for s in sweeps) for op in ("relaunch", "launch")]
            spread = f" ({min(each):.2f}-{max(each):.2f})" if len(each) > 1 else ""
            ratio = f"{medians[0] / (0.05 * medians[1]):.2f}{spread}"
        print(
            f"| {runs} | {cell('dry-run', scale=1000 / runs)} | {cell('status')} | {cell('status-again')} "
            f"| {cell('status', 'calls', digits=0)} | {ratio} |"
        )


if __name__ == "__main__":
    main()
