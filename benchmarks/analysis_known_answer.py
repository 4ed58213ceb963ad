"""Known-answer Monte Carlo of the loss-curve analysis on curves shaped like the sweep's.

Planted curves (tests/support/loss_scenarios.py): power laws in steps and in effective time
under the sweep's own warm-up + cosine schedule and a step schedule, an exponential, broken power
laws (break at epochs 3, 8, 12), a time offset; multiplicative per-batch noise at 1/10/30%: iid,
AR(1) phi 0.98, heteroscedastic, spiky. Each draw goes through ``analyze_run`` with the
``analyze`` command's defaults. Prints one row per (scenario, noise, level): bias, 95% coverage
and width of alpha_early and alpha_full over unflagged values, the share left unflagged, the
knee's error and the modal model from the knee.

    nice -n 5 .venv/bin/python benchmarks/analysis_known_answer.py            # 100 draws each
    nice -n 5 .venv/bin/python benchmarks/analysis_known_answer.py --calibrate  # knee's |z| on nulls
    nice -n 5 .venv/bin/python benchmarks/analysis_known_answer.py --only power_law_tau:ar1:0.3 \
        --draws 400 --first-seed 100                                      # more draws, new seeds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import loss_scenarios as LS

from deconcnn.analysis.per_run import analyze_run

COLUMNS = (
    ("early bias% ± MC se", "alpha_early_bias_pct", "{:+.1f}"),
    ("early cov", "alpha_early_coverage", "{:.2f}"),
    ("early width", "alpha_early_width", "{:.3f}"),
    ("early unflag", "alpha_early_unflagged", "{:.2f}"),
    ("full bias% ± MC se", "alpha_full_bias_pct", "{:+.1f}"),
    ("full cov", "alpha_full_coverage", "{:.2f}"),
    ("full width", "alpha_full_width", "{:.3f}"),
    ("full unflag", "alpha_full_unflagged", "{:.2f}"),
    ("knee err", "knee_err", "{:.2f}"),
    ("knee ok", "knee_within_1", "{:.2f}"),
    ("knee stable", "knee_stable", "{:.2f}"),
    ("model", "model", "{}"),
)


def fmt(v: object, f: str) -> str:
    return "-" if isinstance(v, float) and math.isnan(v) else f.format(v)


def cell(summary: dict[str, object], key: str, f: str) -> str:
    """One table cell; a bias with its Monte Carlo standard error."""
    text = fmt(summary[key], f)
    se = summary.get(key.replace("_bias_pct", "_bias_se_pct")) if key.endswith("_bias_pct") else None
    if isinstance(se, float) and math.isfinite(se) and text != "-":
        return f"{text} ± {se:.1f}"
    return text


def _selected(sel: str, name: str, kind: str, level: float) -> bool:
    want = sel.split(":")
    have = (name, kind, f"{level:g}")
    return all(w == h for w, h in zip(want, have, strict=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + draws - 1")
    ap.add_argument("--calibrate", action="store_true", help="quantiles of the knee's F on the no-knee nulls")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO[:NOISE[:LEVEL]]",
        help="rows to run (repeatable), e.g. power_law_tau:ar1 or offset; default every row",
    )
    args = ap.parse_args()
    if args.calibrate:
        z = []
        for name in ("power_law_tau", "power_law_steps", "step_schedule"):
            for kind in LS.NOISES:
                for lv in LS.LEVELS:
                    for seed in range(args.draws // 4):
                        steps, lr, loss = LS.draw(LS.SCENARIOS[name], kind, lv, 10_000 + seed)
                        out = analyze_run(steps, loss, LS.SPE, lr=lr, knee_stat=math.inf)
                        z.append(out["knee_table"][0]["stat"])
        q = np.nanpercentile(z, [50, 90, 95, 99])
        print(f"F on {len(z)} null draws: median {q[0]:.2f}, 90% {q[1]:.2f}, 95% {q[2]:.2f}, 99% {q[3]:.2f}")
        return
    print("| scenario | noise | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    t0 = time.process_time()
    n = 0
    ref_knee: dict[str, float] = {}  # each curve's median knee at 1% iid noise
    for name, kind, lv in LS.grid():
        if args.only and not any(_selected(sel, name, kind, lv) for sel in args.only):
            continue
        sc = LS.SCENARIOS[name]
        rows = [LS.analyse_draw(sc, kind, lv, seed) for seed in range(args.first_seed, args.first_seed + args.draws)]
        n += len(rows)
        s = LS.summarise(sc, rows, ref_knee.get(name, math.nan))
        if kind == "iid" and lv == min(LS.LEVELS):
            ref_knee[name] = s["knee_median"]
        cells = " | ".join(cell(s, k, f) for _, k, f in COLUMNS)
        print(f"| {name} | {kind} {lv:.0%} | {cells} |", flush=True)
    print(f"\n{n} runs, {(time.process_time() - t0) / n:.3f} s CPU per run (draw + analyze_run)")


if __name__ == "__main__":
    main()
