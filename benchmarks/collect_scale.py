"""How fast, and in how much memory, do `collect` and `analyze` turn a full-size sweep into answers?

Fabricates a sweep the size of loss_lin_slope (216 runs x 50 epochs x 352 steps: ~17,600 train
records per run, plus val every quarter epoch, curvature every 500 steps, noise every 2 epochs and
a checkpoint record per epoch) with the tests' own fabricator (tests/support/fake_sweep.py: the
launcher's manifest, the schema's records, a planted power law per variant), then runs, each in a
fresh process so peak RSS is its own:

  cold      collect with an empty cache (parses every metrics.jsonl)
  warm      collect again, nothing changed (cache hit, tables kept)
  one-run   one run's metrics.jsonl appended to (re-parse one run, re-assemble every table)
  csv       CSV output from the warm cache (assembly only)
  report    report() on the collected sweep (optional, --report)
  analyze   analyze() on it: every run's fits, the sweep's summaries and plots (optional, --analyze)

Prints seconds (wall and CPU), rows/s and peak RSS per phase. Plain script, no asserts:

    .venv/bin/python benchmarks/collect_scale.py                      # full size
    .venv/bin/python benchmarks/collect_scale.py --runs 24 --epochs 10 # smaller
    .venv/bin/python benchmarks/collect_scale.py --workers 2 --report --analyze
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")
LRS, WDS, SEEDS = (0.05, 0.1, 0.2), (1e-4, 1e-3, 1e-2), range(6)


def fabricate(root: Path, n_runs: int, epochs: int, spe: int) -> tuple[int, int]:
    """About n_runs runs of the 216-run grid (whole cells of seeds); returns (runs, records) written."""
    sys.path.insert(0, str(REPO / "tests" / "support"))
    from fake_sweep import make_sweep

    per_variant = len(LRS) * len(WDS) * len(SEEDS)
    variants = VARIANTS[: max(1, -(-n_runs // per_variant))]
    seeds = SEEDS if n_runs >= per_variant else range(max(1, n_runs // (len(variants) * len(LRS) * len(WDS))))
    sweep = make_sweep(
        root,
        name="bench",
        variants=variants,
        lrs=LRS,
        wds=WDS,
        seeds=seeds,
        epochs=epochs,
        steps_per_epoch=spe,
        curv_every=500,
        noise_every=2,
    )
    return len(sweep.counts), sum(sum(c.values()) for c in sweep.counts.values())


def _child(args: argparse.Namespace) -> None:
    """One measured phase in this (fresh) process; prints a JSON line."""
    from deconcnn.analysis.analyze import analyze
    from deconcnn.analysis.collect import collect
    from deconcnn.analysis.report import report

    t = time.perf_counter()  # imports (~0.5 s) not counted
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime
    if args.phase == "report":
        report(args.root, progress=False, workers=args.workers)
        rows = 0
    elif args.phase == "analyze":
        result = analyze(args.root, workers=args.workers, progress=False)
        rows = result.rows["fits"]
    else:
        fmt = "csv" if args.phase == "csv" else "parquet"
        res = collect(args.root, fmt=fmt, progress=False, workers=args.workers)
        rows = sum(v for k, v in res.rows.items() if k != "runs")
    dt = time.perf_counter() - t
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime - cpu0
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {"seconds": dt, "cpu_seconds": cpu, "rows": rows, "peak_rss_mb": peak_self, "peak_worker_rss_mb": peak_kids}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/deconcnn_collect_bench"))
    ap.add_argument("--runs", type=int, default=216)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps-per-epoch", type=int, default=352)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="also time report() on the collected sweep")
    ap.add_argument("--analyze", action="store_true", help="also time analyze() (fits of every run) on it")
    ap.add_argument("--keep", action="store_true", help="keep the fabricated sweep afterwards")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return _child(args)

    shutil.rmtree(args.root, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{os.cpu_count()} CPUs, load average {load} (wall times are sensitive to other jobs; CPU s less)")
    t = time.perf_counter()
    runs, n = fabricate(args.root, args.runs, args.epochs, args.steps_per_epoch)
    size = sum(p.stat().st_size for p in args.root.rglob("metrics.jsonl")) / 2**20
    print(
        f"fabricated {runs} runs, {n:,} records, {size:,.0f} MiB of metrics.jsonl "
        f"in {time.perf_counter() - t:.1f} s  (root {args.root})"
    )

    def phase(name: str) -> None:
        cmd = [sys.executable, __file__, "--phase", name, "--root", str(args.root), "--workers", str(args.workers)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rate = f"{r['rows'] / r['seconds']:>11,.0f} rows/s" if r["rows"] else " " * 18
        cpu_rate = f" ({r['rows'] / r['cpu_seconds']:>9,.0f} rows/CPU-s)" if r["rows"] else " " * 24
        kids = f", workers peak {r['peak_worker_rss_mb']:,.0f} MiB" if args.workers > 1 else ""
        print(
            f"{name:<8} {r['seconds']:6.1f} s wall {r['cpu_seconds']:6.1f} s CPU {rate}{cpu_rate}"
            f"  peak RSS {r['peak_rss_mb']:,.0f} MiB{kids}" + (f"  ({r['rows']:,} rows)" if r["rows"] else "")
        )

    phase("cold")
    phase("warm")
    first = sorted((args.root / "runs").iterdir())[0] / "metrics.jsonl"
    with open(first, "a") as f:
        f.write(
            '{"kind": "checkpoint", "step": 999999, "epoch": 99, "epoch_frac": 99.0, "time": 1.8e9, '
            '"checkpoint_size_mb": 85.3, "path": "checkpoints/last.ckpt"}\n'
        )
    phase("one-run")
    phase("csv")
    if args.report:
        phase("report")
    if args.analyze:
        phase("analyze")
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
