"""Do the logged bits agree with the logged nats? Reads both columns, so a wrong one fails.

Each train record carries ``loss_train_nats`` and ``loss_train_bits`` (docs/metrics.md). A check
that divides the nats by ln 2 and compares the result with itself cannot fail; this one compares
the two logged columns record by record, and the exponent fitted on each:

* column: ``rel_j = |bits_j ln 2 - nats_j| / nats_j`` over the records where both are finite;
  ``units_max_rel_diff = max rel_j``, ``units_bits_per_nat = median(bits_j / nats_j)`` (1/ln 2 =
  1.4427 when right);
* exponent: the caller's fit (``alpha_of``, e.g. the power law from the knee) run on the nats and
  on the bits column; ``units_alpha_rel_diff = |a_bits - a_nats| / |a_nats|``. The fits are
  scale-equivariant, so a right column gives ~1e-14;

``units_agree`` iff both are at most ``rtol`` (1e-6: the columns are written from the same float).
An affine error (bits = 3 nats + 0.5) keeps a power law's exponent when its floor is free, so the
column comparison is the one that catches it; the exponent comparison catches a fit that is not
scale-equivariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

UNITS_RTOL = 1e-6
UNITS_COLUMNS: tuple[str, ...] = (
    "units_n",
    "units_bits_per_nat",
    "units_max_rel_diff",
    "units_alpha_nats",
    "units_alpha_bits",
    "units_alpha_rel_diff",
    "units_agree",
    "units_reason",
)


def units_check(
    loss_nats: ArrayLike,
    loss_bits: ArrayLike | None,
    alpha_of: Callable[[np.ndarray], float] | None = None,
    *,
    rtol: float = UNITS_RTOL,
) -> dict[str, Any]:
    """The ``UNITS_COLUMNS`` of a run row (module docstring); never raises."""
    out: dict[str, Any] = dict.fromkeys(UNITS_COLUMNS, math.nan) | {"units_n": 0, "units_agree": False}
    nats = np.asarray(loss_nats, dtype=np.float64).reshape(-1)
    if loss_bits is None:
        return out | {"units_reason": "no loss_train_bits logged"}
    bits = np.asarray(loss_bits, dtype=np.float64).reshape(-1)
    if bits.shape != nats.shape:
        return out | {"units_reason": f"nats ({nats.size}) and bits ({bits.size}) differ in length"}
    both = np.isfinite(nats) & np.isfinite(bits) & (nats > 0)
    n = int(both.sum())
    out["units_n"] = n
    if n == 0:
        return out | {"units_reason": "no record with a finite, positive loss in both nats and bits"}
    rel = np.abs(bits[both] * math.log(2.0) - nats[both]) / nats[both]
    out |= {"units_max_rel_diff": float(rel.max()), "units_bits_per_nat": float(np.median(bits[both] / nats[both]))}
    reasons = []
    if not rel.max() <= rtol:
        reasons.append(
            f"loss_train_bits is not loss_train_nats / ln 2 at {int((rel > rtol).sum())} of {n} records "
            f"(max relative difference {rel.max():.3g}; median bits/nats {out['units_bits_per_nat']:.4g}, "
            f"expected {1 / math.log(2.0):.4g})"
        )
    if alpha_of is not None:
        a_n, a_b = alpha_of(nats), alpha_of(bits)
        diff = abs(a_b - a_n) / abs(a_n) if a_n else math.nan
        out |= {"units_alpha_nats": a_n, "units_alpha_bits": a_b, "units_alpha_rel_diff": diff}
        if not diff <= rtol:
            reasons.append(f"alpha differs by {diff:.3g} relative between nats and bits (> {rtol:g})")
    return out | {"units_agree": not reasons, "units_reason": "; ".join(reasons)}
