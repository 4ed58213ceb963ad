"""Local CPU runs forked from the preloaded server (deconcnn.backends.preloaded) against fresh
interpreters (DECONCNN_FORK_RUNS=0): the same small sweep launched both ways, in alternating pairs.

CPU is the machine's (/proc/stat, all cores): a forked run is reaped by the forkserver, which the
launcher never waits for, so the launcher's own rusage would leave the runs out. Run it on a quiet
machine and read the per-pair columns: this machine's CPU seconds move 1.2-1.5x between hours.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deconcnn.backends.preloaded import SWITCH_ENV

SWEEP = """name: bench
run_id: "{{variant}}_s{{seed}}"
overrides:
  - debug=tiny
  - trainer.max_epochs={epochs}
axes:
  seed: range(0,{runs})
variants:
  S-core:
    experiment: loss_lin_slope_base
"""


def machine_cpu_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def launch(sweep: Path, out: Path, parallel: int, fork: bool) -> tuple[float, float]:
    env = {**os.environ, SWITCH_ENV: "1" if fork else "0"}
    cmd = [sys.executable, "-m", "deconcnn.cli", "launch", str(sweep), "--executor", "local"]
    cpu, wall = machine_cpu_s(), time.monotonic()
    subprocess.run([*cmd, "--parallel", str(parallel), "--out", str(out)], env=env, check=True, capture_output=True)
    return machine_cpu_s() - cpu, time.monotonic() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4, help="runs per launch (conf/debug/tiny.yaml)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of 16 steps per run")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2, help="forked/fresh launch pairs, alternating")
    args = ap.parse_args()
    rows: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "bench.yaml"
        sweep.write_text(SWEEP.format(runs=args.runs, epochs=args.epochs))
        for pair in range(args.pairs):
            for fork in (True, False):
                out = Path(tmp) / f"out-{pair}-{fork}"
                rows[fork].append(launch(sweep, out, args.parallel, fork))
                print(
                    f"pair {pair + 1}, {'forked' if fork else 'fresh'}: {rows[fork][-1][0]:.1f} CPU-s", file=sys.stderr
                )
    print(
        f"\n{args.runs} runs of {args.epochs} epochs (debug=tiny), {args.parallel} at a time, {os.cpu_count()} cores\n"
    )
    print("| runs start | CPU-s per launch, by pair | CPU-s per run | wall s per launch |")
    print("|---|---|---|---|")
    for fork in (True, False):
        cpu = [c for c, _ in rows[fork]]
        wall = [w for _, w in rows[fork]]
        mean = sum(cpu) / len(cpu)
        name = "forked (default on a CPU)" if fork else f"fresh ({SWITCH_ENV}=0)"
        print(
            f"| {name} | {' / '.join(f'{c:.1f}' for c in cpu)} | {mean / args.runs:.1f} | "
            f"{' / '.join(f'{w:.1f}' for w in wall)} |"
        )
    ratios = [fresh / forked for (forked, _), (fresh, _) in zip(rows[True], rows[False])]
    print(f"\nfresh / forked CPU, by pair: {' / '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
