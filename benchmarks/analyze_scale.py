"""How long, and in how much memory, does `analyze` take on a full-size sweep?

Fabricates the loss_lin_slope grid (216 runs x 50 epochs x 352 steps: ~17,600 train records per
run, curvature every 500 steps, noise every 2 epochs) with the tests' fabricator
(tests/support/fake_sweep.py, via benchmarks/collect_scale.py's `fabricate`), collects it once, then
runs `analyze` (the per-run fits in worker processes, the sweep's tables, plots and report) in a
fresh process, so its peak RSS is its own. Prints wall and CPU seconds, per-run CPU, and peak RSS of
the main process and of the largest worker. Goal: <= 120 s wall on a 2-core machine at the default
settings (`--boot 20`, `--workers 2`). Plain script, no asserts:

    .venv/bin/python benchmarks/analyze_scale.py                         # full size, ~10-15 min in all
    .venv/bin/python benchmarks/analyze_scale.py --runs 36 --epochs 20   # smaller
    .venv/bin/python benchmarks/analyze_scale.py --reuse                  # analyze an earlier fabrication again
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/analyze_scale.py --reuse  # an older commit's code
                                          # (git archive COMMIT deconcnn | tar -x -C /tmp/old), side by side
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect_scale import fabricate


def _child(args: argparse.Namespace) -> None:
    """One measured phase in this (fresh) process; prints a JSON line."""
    from deconcnn.analysis.analyze import analyze
    from deconcnn.analysis.collect import collect

    t = time.perf_counter()  # imports not counted
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime
    out: dict[str, object] = {}
    if args.phase == "collect":
        collect(args.root, progress=False, workers=args.workers)
    else:
        result = analyze(args.root, workers=args.workers, n_boot=args.boot, progress=False)
        # getattr: the same script measures an older checkout (PYTHONPATH) side by side
        out = {"runs": result.analysed, "plot_errors": getattr(result, "plot_errors", {})}
    dt = time.perf_counter() - t
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out |= {
        "seconds": dt,
        "cpu_seconds": ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime - cpu0,
        "peak_rss_mib": ru.ru_maxrss / 1024,
        "peak_worker_rss_mib": rc.ru_maxrss / 1024,
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/deconcnn_analyze_bench"))
    ap.add_argument("--runs", type=int, default=216)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps-per-epoch", type=int, default=352)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--boot", type=int, default=20, help="analyze --boot (its default: 20)")
    ap.add_argument("--reuse", action="store_true", help="analyze the sweep already under --root")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return _child(args)

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{os.cpu_count()} CPUs, load average {load} (wall times move with other jobs; CPU seconds less)")
    if not args.reuse:
        shutil.rmtree(args.root, ignore_errors=True)
        t = time.perf_counter()
        runs, n = fabricate(args.root, args.runs, args.epochs, args.steps_per_epoch)
        print(f"fabricated {runs} runs, {n:,} records in {time.perf_counter() - t:.1f} s  (root {args.root})")

    def phase(name: str) -> dict:
        cmd = [sys.executable, __file__, "--phase", name, "--root", str(args.root)]
        cmd += ["--workers", str(args.workers), "--boot", str(args.boot)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    c = phase("collect")
    print(f"collect  {c['seconds']:6.1f} s wall {c['cpu_seconds']:6.1f} s CPU  peak RSS {c['peak_rss_mib']:,.0f} MiB")
    a = phase("analyze")
    per_run = a["cpu_seconds"] / max(1, a["runs"])
    print(
        f"analyze  {a['seconds']:6.1f} s wall {a['cpu_seconds']:6.1f} s CPU ({per_run:.2f} CPU-s per run, "
        f"{a['runs']} runs, --boot {args.boot}, --workers {args.workers})  peak RSS {a['peak_rss_mib']:,.0f} MiB, "
        f"largest worker {a['peak_worker_rss_mib']:,.0f} MiB  (goal: <= 120 s wall)"
    )
    if a["plot_errors"]:
        print(f"plot errors: {a['plot_errors']}")


if __name__ == "__main__":
    main()
