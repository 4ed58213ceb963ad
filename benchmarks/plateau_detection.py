"""Does the lambda_max plateau detector find planted plateaus, and refuse what is not one?

Monte Carlo over the scenarios of tests/support/lambda_max_curves.py (the sweep's warm-up + cosine
schedule, 352 steps per epoch, a curvature record every 500 steps, multiplicative noise), ``--draws``
per scenario (default 200), for the detector of deconcnn.analysis.plateau and, side by side, the
rule it replaced (first record from which every later one stays within 10% of its own later median).
Prints one markdown table: per scenario the planted plateau epoch, how often a plateau was reported,
how often within +/-2 epochs of the planted one, the interval's coverage and median width, and the
shapes reported. Plain script, no asserts:

    .venv/bin/python benchmarks/plateau_detection.py            # 200 draws per scenario, ~1 min
    .venv/bin/python benchmarks/plateau_detection.py --draws 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import lambda_max_curves as C

from deconcnn.analysis.plateau import PLATEAU_SHAPES, detect_plateau


def band_rule(steps: np.ndarray, values: np.ndarray, band: float = 0.10, tail: int = 3) -> float | None:
    """The old stats.plateau_step: first i with every later value within band of median(v[i:])."""
    for i in range(values.size - tail + 1):
        med = float(np.median(values[i:]))
        if np.all(np.abs(values[i:] - med) <= band * abs(med)):
            return float(steps[i])
    return None


def scenarios() -> list[tuple[str, object, float | None]]:
    out: list[tuple[str, object, float | None]] = []
    for epoch in (2.0, 4.6, 10.0, 20.0):
        out.append((f"linear rise, plateau at epoch {epoch:g}", C.linear_rise(epoch), epoch))
        out.append((f"log-linear rise, plateau at epoch {epoch:g}", C.exponential_rise(epoch), epoch))
    out.append(("flat from the start", C.flat(), 0.0))
    out.append(("tracks 2/lr under warm-up + cosine", C.tracks_two_over_lr(), None))
    out.append(("rising to the end, (t/T)^0.5", C.steady_rise(0.5), None))
    out.append(("rising to the end, (t/T)^0.2", C.steady_rise(0.2), None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(
        f"{args.draws} draws per scenario; a record every {C.EVERY} steps ({C.RECORDS.size} per run), "
        f"{C.SPE} steps per epoch"
    )
    print()
    print(
        "| scenario | noise | planted epoch | plateau reported | within +/-2 ep | interval covers | median width (ep) "
        "| shapes | old rule: reported / within +/-2 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, curve, planted in scenarios():
        for noise in (0.05, 0.10):
            rng = np.random.default_rng(args.seed)
            found = near = covered = old_found = old_near = 0
            widths: list[float] = []
            shapes: Counter[str] = Counter()
            for _ in range(args.draws):
                v = C.draw(curve, noise, rng)  # type: ignore[arg-type]
                p = detect_plateau(C.RECORDS, v, lr_steps=C.STEPS, lr=C.LR)
                shapes[p.shape] += 1
                if p.shape in PLATEAU_SHAPES and p.step is not None:
                    found += 1
                    ep = p.step / C.SPE
                    assert p.lo is not None and p.hi is not None
                    widths.append((p.hi - p.lo) / C.SPE)
                    if planted is not None:
                        near += abs(ep - planted) <= 2
                        covered += p.lo / C.SPE - 1e-9 <= planted <= p.hi / C.SPE + 1e-9
                old = band_rule(C.RECORDS, v)
                if old is not None:
                    old_found += 1
                    old_near += planted is not None and abs(old / C.SPE - planted) <= 2
            d = args.draws
            width = f"{np.median(widths):.2f}" if widths else "-"
            shape_text = ", ".join(f"{k or 'none'} {v}" for k, v in shapes.most_common())
            planted_text = "none" if planted is None else f"{planted:g}"
            near_text = f"{near / d:.0%}" if planted is not None else "-"
            cov_text = f"{covered / found:.0%}" if planted is not None and found else "-"
            old_near_text = f"{old_near / d:.0%}" if planted is not None else "-"
            print(
                f"| {name} | {noise:.0%} | {planted_text} | {found / d:.0%} | {near_text} | {cov_text} | {width} "
                f"| {shape_text} | {old_found / d:.0%} / {old_near_text} |"
            )
    print()
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
