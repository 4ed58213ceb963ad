"""Small-sample statistics for the sweep: correlations, effect sizes, spreads.

Every function takes plain sequences, drops non-finite values (pairs, for correlations) and
reports how many it used; when too few remain it returns NaNs (or None) with a ``reason``
instead of raising. Intervals are two-sided at ``conf`` (0.95 by default); ``q`` below is the
standard-normal quantile ``Phi^-1((1 + conf) / 2)`` (1.96).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize
from scipy import stats as sps

from deconcnn.analysis.curves import FloatArray

MIN_CORRELATION_PAIRS = 4

CORRELATION_KEYS = (
    "n",
    "pearson_r",
    "pearson_lo",
    "pearson_hi",
    "pearson_p",
    "spearman_rho",
    "spearman_lo",
    "spearman_hi",
    "spearman_p",
    "reason",
)
EFFECT_KEYS = (
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "median_a",
    "median_b",
    "diff_mean",
    "hedges_g",
    "g_lo",
    "g_hi",
    "mw_u",
    "mw_p",
    "welch_t",
    "welch_p",
    "reason",
)
SPREAD_KEYS = ("n", "n_nan", "median", "q25", "q75", "iqr", "min", "max")


def _finite(values: ArrayLike) -> FloatArray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]


def _fisher_ci(r: float, se: float, q: float) -> tuple[float, float]:
    """``tanh(atanh r +- q se)``; ``r`` clipped inside (-1, 1) so a perfect r gives a point."""
    z = math.atanh(max(min(r, 1 - 1e-15), -1 + 1e-15))
    return math.tanh(z - q * se), math.tanh(z + q * se)


def correlation(x: ArrayLike, y: ArrayLike, *, conf: float = 0.95) -> dict[str, Any]:
    """Pearson and Spearman correlation of the finite pairs of ``x`` and ``y``.

    * Pearson ``r`` with the Fisher-z interval ``tanh(atanh r +- q / sqrt(n - 3))`` and the
      two-sided t-test p-value (``scipy.stats.pearsonr``).
    * Spearman ``rho`` with the Fisher-z interval using the Bonett-Wright (2000) variance
      ``(1 + rho^2 / 2) / (n - 3)``, and ``scipy.stats.spearmanr``'s p-value.

    Keys ``CORRELATION_KEYS``. Fewer than 4 finite pairs, or a constant variable, give NaNs with a
    ``reason``.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {k: math.nan for k in CORRELATION_KEYS}
    if xa.shape != ya.shape:
        return out | {"n": 0, "reason": f"x ({xa.size}) and y ({ya.size}) differ in length"}
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = int(xa.size)
    out |= {"n": n, "reason": ""}
    if n < MIN_CORRELATION_PAIRS:
        return out | {"reason": f"{n} finite pairs (< {MIN_CORRELATION_PAIRS})"}
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return out | {"reason": "a variable is constant (correlation undefined)"}
    q = float(sps.norm.ppf((1 + conf) / 2))
    r, p_r = sps.pearsonr(xa, ya)
    rho, p_rho = sps.spearmanr(xa, ya)
    r, rho = float(r), float(rho)
    r_lo, r_hi = _fisher_ci(r, 1 / math.sqrt(n - 3), q)
    s_lo, s_hi = _fisher_ci(rho, math.sqrt((1 + rho**2 / 2) / (n - 3)), q)
    return out | {
        "pearson_r": r,
        "pearson_lo": r_lo,
        "pearson_hi": r_hi,
        "pearson_p": float(p_r),
        "spearman_rho": rho,
        "spearman_lo": s_lo,
        "spearman_hi": s_hi,
        "spearman_p": float(p_rho),
    }


def _ncp_interval(t_obs: float, df: float, conf: float) -> tuple[float, float]:
    """Noncentrality parameters whose noncentral-t puts ``t_obs`` at the interval's edges."""
    tail = (1 - conf) / 2
    width = 10.0 * (1.0 + abs(t_obs))
    lo = optimize.brentq(lambda nc: sps.nct.sf(t_obs, df, nc) - tail, t_obs - width, t_obs + width)
    hi = optimize.brentq(lambda nc: sps.nct.cdf(t_obs, df, nc) - tail, t_obs - width, t_obs + width)
    return float(lo), float(hi)


def effect_size(a: ArrayLike, b: ArrayLike, *, conf: float = 0.95) -> dict[str, Any]:
    """Group ``a`` (e.g. a variant's seeds) against group ``b`` (the baseline's seeds).

    * ``diff_mean = mean(a) - mean(b)``.
    * Hedges' ``g = J d``, ``d = diff_mean / s_p``, pooled ``s_p^2 = ((n_a - 1) s_a^2 + (n_b - 1)
      s_b^2) / (n_a + n_b - 2)``, small-sample correction ``J = 1 - 3 / (4 (n_a + n_b) - 9)``.
    * ``g_lo``/``g_hi``: interval for the population standardised difference ``delta`` by
      inverting the noncentral t distribution of ``t = d sqrt(n_a n_b / (n_a + n_b))`` with
      ``n_a + n_b - 2`` degrees of freedom (exact under normal, equal-variance groups; Steiger &
      Fouladi 1997).
    * ``mw_u``, ``mw_p``: Mann-Whitney U of ``a`` and its two-sided p-value (exact for small
      samples without ties, ``scipy.stats.mannwhitneyu``); ``welch_t``, ``welch_p``: Welch's
      unequal-variance t-test.

    Unpaired (seeds are not matched across groups). Keys ``EFFECT_KEYS``; fewer than 2 finite
    values in a group gives NaNs with a ``reason``; zero variance in both groups leaves ``g``
    and the t-test NaN (``reason`` says so) but keeps the rank test.
    """
    xa, xb = _finite(a), _finite(b)
    na, nb = int(xa.size), int(xb.size)
    out: dict[str, Any] = {k: math.nan for k in EFFECT_KEYS} | {"n_a": na, "n_b": nb, "reason": ""}
    if na < 2 or nb < 2:
        return out | {"reason": f"need >= 2 finite values per group (got {na} and {nb})"}
    diff = float(xa.mean() - xb.mean())
    u, p_u = sps.mannwhitneyu(xa, xb, alternative="two-sided")
    out |= {
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "median_a": float(np.median(xa)),
        "median_b": float(np.median(xb)),
        "diff_mean": diff,
        "mw_u": float(u),
        "mw_p": float(p_u),
    }
    df = na + nb - 2
    sp = math.sqrt(((na - 1) * xa.var(ddof=1) + (nb - 1) * xb.var(ddof=1)) / df)
    if sp == 0:
        return out | {"reason": "zero variance in both groups (g and t-test undefined)"}
    d = diff / sp
    scale = math.sqrt(na * nb / (na + nb))
    welch = sps.ttest_ind(xa, xb, equal_var=False)
    out |= {
        "hedges_g": (1 - 3 / (4 * (na + nb) - 9)) * d,
        "welch_t": float(welch.statistic),
        "welch_p": float(welch.pvalue),
    }
    try:
        lo, hi = _ncp_interval(d * scale, df, conf)
    except ValueError as err:
        return out | {"reason": f"noncentral-t interval failed: {err}"}
    return out | {"g_lo": lo / scale, "g_hi": hi / scale}


def median_spread(values: ArrayLike) -> dict[str, Any]:
    """Median, quartiles (linear interpolation), IQR = q75 - q25, min, max of the finite values.

    Keys ``SPREAD_KEYS``; ``n`` counts finite values, ``n_nan`` the others; all NaN when n = 0.
    """
    raw = np.asarray(values, dtype=np.float64).reshape(-1)
    v = raw[np.isfinite(raw)]
    out: dict[str, Any] = {"n": int(v.size), "n_nan": int(raw.size - v.size)}
    if v.size == 0:
        return out | {k: math.nan for k in SPREAD_KEYS[2:]}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return out | {
        "median": float(med),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def partial_correlation(
    x: ArrayLike, y: ArrayLike, groups: Sequence[Hashable], *, conf: float = 0.95
) -> dict[str, Any]:
    """Correlation of ``x`` and ``y`` within groups (e.g. sweep cells), pooled over the groups.

    Each value minus its group's mean (Pearson; for Spearman the ranks over all finite pairs, minus
    their group's mean rank), then the correlation of those deviations: the partial correlation
    on the group factor. A correlation that runs only through the grid (both sides move with lr)
    gives ~0. Only groups with >= 2 finite pairs take part; with ``q = n_cells - 1`` factor
    levels removed, the Fisher intervals use ``se = 1/sqrt(n - q - 3)`` (Spearman: times
    ``sqrt(1 + rho^2/2)``) and the p-values a t-test with ``n - q - 2`` degrees of freedom.
    Keys ``CORRELATION_KEYS`` and ``n_cells``.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {k: math.nan for k in CORRELATION_KEYS} | {"n": 0, "n_cells": 0, "reason": ""}
    if not xa.shape == ya.shape == (len(groups),):
        return out | {"reason": f"x ({xa.size}), y ({ya.size}) and groups ({len(groups)}) differ in length"}
    keep = np.isfinite(xa) & np.isfinite(ya)
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    labels = np.array([index[g] for g in groups], dtype=np.int64)[keep]
    xa, ya = xa[keep], ya[keep]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    member = counts[inverse] >= 2
    xa, ya = xa[member], ya[member]
    _, inverse = np.unique(inverse[member], return_inverse=True)  # cells numbered 0..n_cells-1 again
    n, n_cells = int(xa.size), int(np.unique(inverse).size)
    df = n - n_cells - 1  # n - q - 2 with q = n_cells - 1
    out |= {"n": n, "n_cells": n_cells}
    if df < 2:
        return out | {"reason": f"{n} finite pairs in {n_cells} cells with >= 2 (need n - cells >= 3)"}

    def centred(v: np.ndarray) -> np.ndarray:
        return v - (np.bincount(inverse, v) / np.bincount(inverse))[inverse]

    q = float(sps.norm.ppf((1 + conf) / 2))
    res: dict[str, float] = {}
    for name, (a, b) in (("pearson", (xa, ya)), ("spearman", (sps.rankdata(xa), sps.rankdata(ya)))):
        da, db = centred(a), centred(b)
        if not (np.any(da) and np.any(db)):
            return out | {"reason": "a variable is constant within every cell (correlation undefined)"}
        r = float(np.clip(np.dot(da, db) / math.sqrt(np.dot(da, da) * np.dot(db, db)), -1, 1))
        t = r * math.sqrt(df / max(1e-300, 1 - r * r))
        se = math.sqrt((1 + r * r / 2) if name == "spearman" else 1.0) / math.sqrt(df - 1)
        lo, hi = _fisher_ci(r, se, q)
        key = "pearson_r" if name == "pearson" else "spearman_rho"
        res |= {key: r, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_p": float(2 * sps.t.sf(abs(t), df))}
    return out | res
