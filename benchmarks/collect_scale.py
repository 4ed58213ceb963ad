"""How fast, and in how much memory, does `collect` turn a full-size sweep into tables?

Fabricates a sweep the size of loss_lin_slope (216 runs x 50 epochs x 352 steps: ~17,600 train
records per run, plus val every quarter epoch, curvature every 500 steps, noise every 2 epochs and
a checkpoint record per epoch), then runs, each in a fresh process so peak RSS is its own:

  cold      collect with an empty cache (parses every metrics.jsonl)
  warm      collect again, nothing changed (cache hit, tables kept)
  one-run   one run's metrics.jsonl appended to (re-parse one run, re-assemble every table)
  csv       CSV output from the warm cache (assembly only)
  report    report() on the collected sweep (optional, --report)

Prints rows/s and peak RSS per phase. Plain script, no asserts:

    .venv/bin/python benchmarks/collect_scale.py                      # full size
    .venv/bin/python benchmarks/collect_scale.py --runs 24 --epochs 10 # smaller
    .venv/bin/python benchmarks/collect_scale.py --workers 4 --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("S-core", "S-adamw", "S-bn-off", "S-narrow")


def fabricate(root: Path, n_runs: int, epochs: int, spe: int) -> int:
    """Write n_runs runs; returns the number of records written. Lines formatted by hand (fast)."""
    grid = [(v, lr, wd, s) for v in VARIANTS for lr in (0.05, 0.1, 0.2) for wd in (1e-4, 1e-3, 1e-2)
            for s in range(6)]
    rng = random.Random(0)
    runs, total = {}, 0
    quarter = spe // 4
    for v, lr, wd, s in grid[:n_runs]:
        rid = f"{v}_lr{lr:g}_wd{wd:g}_s{s}"
        runs[rid] = {"variant": v, "overrides": [], "params": {"lr": lr, "weight_decay": wd, "seed": s}}
        d = root / "runs" / rid
        d.mkdir(parents=True, exist_ok=True)
        t0 = 1.7e9
        n_steps = epochs * spe
        out = []
        for step in range(1, n_steps + 1):
            ep, ef, t = (step - 1) // spe, step / spe, t0 + 0.08 * step
            loss = 0.05 + 2.3 * (1 + step / 50) ** -0.6 * math.exp(0.1 * rng.gauss(0, 1))
            out.append(f'{{"kind": "train", "step": {step}, "epoch": {ep}, "epoch_frac": {ef!r}, '
                       f'"time": {t!r}, "loss_train_nats": {loss!r}, "loss_train_bits": '
                       f'{loss / math.log(2)!r}, "acc_train": {1 - loss / 2.4!r}, "lr": {lr * 0.5!r}, '
                       f'"wd": {wd!r}}}\n')
            if step % quarter == 0:
                out.append(f'{{"kind": "val", "step": {step}, "epoch": {ep}, "epoch_frac": {ef!r}, '
                           f'"time": {t!r}, "loss_val_nats": {loss * 1.2!r}, "loss_val_bits": '
                           f'{loss * 1.2 / math.log(2)!r}, "acc_val": {1 - loss / 2!r}, "grad_norm": '
                           f'{1.5!r}, "weight_norm": {50 + step * 0.01!r}}}\n')
            if step % 500 == 0:
                out.append(f'{{"kind": "curvature", "step": {step}, "epoch": {ep}, "epoch_frac": {ef!r}, '
                           f'"time": {t!r}, "lambda_max": {20.0 + rng.random()!r}, '
                           f'"lambda_max_residual": 0.01, "power_iters": 20, "trace": {800.0 * (1 + rng.random())!r}, '
                           f'"trace_stderr": 20.5, "hvps": 30, "bn_mode": "eval"}}\n')
            if step % (2 * spe) == 0:
                out.append(f'{{"kind": "noise", "step": {step}, "epoch": {ep}, "epoch_frac": {ef!r}, '
                           f'"time": {t!r}, "psd_tail": {rng.random() * 1e-3!r}, "resid_power": 0.001, '
                           f'"grad_var": 0.01, "noise_scale": {1000 * (1 + ef)!r}, "n_losses": 512}}\n')
            if step % spe == 0:
                out.append(f'{{"kind": "checkpoint", "step": {step}, "epoch": {ep}, "epoch_frac": {ef!r}, '
                           f'"time": {t!r}, "checkpoint_size_mb": 85.3, "path": "checkpoints/last.ckpt"}}\n')
        total += len(out)
        (d / "metrics.jsonl").write_text("".join(out))
        (d / "run.json").write_text(json.dumps({
            "status": "completed", "attempt": 1, "start_time": t0, "end_time": t0 + 0.08 * n_steps,
            "last_step": n_steps, "diverged_step": None, "host": "node01", "slurm_job_id": None,
            "error": None, "run_id": rid}))
    (root / "manifest.json").write_text(json.dumps({"sweep": "bench", "runs": runs}))
    return total


def _child(args: argparse.Namespace) -> None:
    """One measured phase in this (fresh) process; prints a JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deconcnn.sweep.collect import collect
    from deconcnn.sweep.report import report

    t = time.perf_counter()  # imports (~0.5 s) not counted
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime
    if args.phase == "report":
        report(args.root, progress=False, workers=args.workers)
        rows = 0
    else:
        fmt = "csv" if args.phase == "csv" else "parquet"
        res = collect(args.root, fmt=fmt, progress=False, workers=args.workers)
        rows = sum(v for k, v in res.rows.items() if k != "runs")
    dt = time.perf_counter() - t
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime - cpu0
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "rows": rows, "peak_rss_mb": peak_self,
                      "peak_worker_rss_mb": peak_kids}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/deconcnn_collect_bench"))
    ap.add_argument("--runs", type=int, default=216)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps-per-epoch", type=int, default=352)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="also time report() on the collected sweep")
    ap.add_argument("--keep", action="store_true", help="keep the fabricated sweep afterwards")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return _child(args)

    shutil.rmtree(args.root, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{os.cpu_count()} CPUs, load average {load} (wall times are sensitive to other jobs; CPU s less)")
    t = time.perf_counter()
    n = fabricate(args.root, args.runs, args.epochs, args.steps_per_epoch)
    size = sum(p.stat().st_size for p in args.root.rglob("metrics.jsonl")) / 2**20
    print(f"fabricated {args.runs} runs, {n:,} records, {size:,.0f} MiB of metrics.jsonl "
          f"in {time.perf_counter() - t:.1f} s  (root {args.root})")

    def phase(name: str) -> None:
        cmd = [sys.executable, __file__, "--phase", name, "--root", str(args.root),
               "--workers", str(args.workers)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rate = f"{r['rows'] / r['seconds']:>11,.0f} rows/s" if r["rows"] else " " * 18
        cpu_rate = f" ({r['rows'] / r['cpu_seconds']:>9,.0f} rows/CPU-s)" if r["rows"] else " " * 24
        kids = f", workers peak {r['peak_worker_rss_mb']:,.0f} MiB" if args.workers > 1 else ""
        print(f"{name:<8} {r['seconds']:6.1f} s wall {r['cpu_seconds']:6.1f} s CPU {rate}{cpu_rate}"
              f"  peak RSS {r['peak_rss_mb']:,.0f} MiB{kids}" + (f"  ({r['rows']:,} rows)" if r["rows"] else ""))

    phase("cold")
    phase("warm")
    first = sorted((args.root / "runs").iterdir())[0] / "metrics.jsonl"
    with open(first, "a") as f:
        f.write('{"kind": "val", "step": 999999, "epoch": 99, "epoch_frac": 99.0, "time": 1.8e9, '
                '"loss_val_nats": 0.5}\n')
    phase("one-run")
    phase("csv")
    if args.report:
        phase("report")
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
