"""Log-spaced binning of a loss curve: the input of every fit in :mod:`deconcnn.analysis.fits`.

A run has one training loss per batch (~17,600 per 50-epoch run). Fitting those points directly
weights the last decade of steps 1000x more than the first and is slow; a power law is a
statement about decades. So the step axis ``t`` (> 0) is cut into bins of equal width in
``log10 t``, anchored at powers of ten: bin ``k`` is ``[10^(k/B), 10^((k+1)/B))`` with ``B`` =
``bins_per_decade``. Bins without points are dropped. Each bin gives

* ``t``: geometric mean of the steps in the bin, ``exp(mean(ln t_j))``. The model is evaluated
  there and compared with the bin's mean loss. For ``f = a t^-alpha`` the bin mean of ``f``
  exceeds ``f(geometric mean)`` by a relative ``~ alpha^2 w^2 / 24`` (``w = ln 10 / B`` the bin
  width in ``ln t``): 2e-4 at ``B = 20`` and ``alpha = 1``, the same factor in every full bin,
  so it moves ``a`` by that fraction and ``alpha`` not at all.
* ``y``: mean loss, ``std`` (ddof 1, NaN for one point), ``sem = std / sqrt(n)``, ``count = n``.
* ``sigma``: the fit's standard error of ``y``, from the pooled relative variance of all bins,
  not from the bin's own scatter::

      r0^2     = sum_i (n_i - 1) s_i^2 / ybar_i^2  /  sum_i (n_i - 1)      over bins with n_i >= 2
      sigma_i  = r0 * ybar_i / sqrt(n_i)

  A weight that depends on the bin's own scatter selects against bins that hold a rare spike
  (their sample variance jumps), so small bins are fitted at the typical, spike-free level and
  large bins at the mean: with 0.5% of batches x3 on 1% noise that biased alpha by +0.8% and
  made a broken power law win in 14% of pure power laws (docs/analysis.md section 2). The
  pooled rule keeps the bins' relative weights a function of their size and level only; the
  intervals come from the per-step residuals (:mod:`slopes`), not from ``sigma``. Every term
  scales with ``y``, so ``sigma`` is equivariant under a change of units (nats -> bits) and fits
  in either unit agree (see ``fits.units_check``). Without any within-bin scatter (``r0 = 0``:
  each bin one point, or piecewise-constant data) every bin gets the same ``sigma`` = mean
  ``|y|`` (an unweighted fit).

Losses must be finite and > 0 (cross-entropy of a batch); :func:`curve_problem` says why not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

DEFAULT_BINS_PER_DECADE = 20


@dataclass(frozen=True)
class Binned:
    """A binned curve; arrays are aligned, one entry per non-empty bin, ascending ``t``.

    ``lo``/``hi`` are the bin's edges (``[lo, hi)``); ``t_first``/``t_last`` the first and last
    step actually in the bin.
    """

    t: FloatArray
    y: FloatArray
    sigma: FloatArray
    std: FloatArray
    sem: FloatArray
    count: NDArray[np.int64]
    lo: FloatArray
    hi: FloatArray
    t_first: FloatArray
    t_last: FloatArray

    def __len__(self) -> int:
        return int(self.t.size)

    def window(self, t_start: float, t_end: float = np.inf) -> Binned:
        """The bins lying wholly inside ``[t_start, t_end]`` (by their first and last step).

        ``sigma`` is kept as computed on the whole curve (its pooled prior is a property of the
        run's noise, not of the window).
        """
        keep = (self.t_first >= t_start) & (self.t_last <= t_end)
        return Binned(**{name: getattr(self, name)[keep] for name in _FIELDS})


_FIELDS = ("t", "y", "sigma", "std", "sem", "count", "lo", "hi", "t_first", "t_last")


def curve_problem(t: ArrayLike, y: ArrayLike) -> str:
    """Why ``(t, y)`` cannot be binned and fitted, or ``""`` when it can.

    Checks: same length, at least one point, all finite, ``t > 0``, ``y > 0``.
    """
    ta = np.asarray(t, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if ta.shape != ya.shape:
        return f"t ({ta.size}) and y ({ya.size}) differ in length"
    if ta.size == 0:
        return "no points"
    bad = int(np.sum(~np.isfinite(ya)) + np.sum(~np.isfinite(ta)))
    if bad:
        return f"{bad} non-finite values"
    if np.any(ta <= 0):
        return "non-positive t (log axis undefined; use t = step + 1)"
    if np.any(ya <= 0):
        return "non-positive loss (fits assume a positive loss)"
    return ""


TAU = "tau"
STEPS = "steps"
TIME_AXES = (TAU, STEPS)
TIME_AXIS_LABELS = {TAU: "effective time tau (steps at peak lr)", STEPS: "step + 1"}


def time_axis(steps: ArrayLike, lr: ArrayLike | None = None, kind: str = TAU) -> tuple[FloatArray, str, str]:
    """The fits' time axis per step: ``(x, kind used, why it is not the one asked for)``.

    ``steps``: ``x = step + 1`` (the batch's update number). ``tau`` (effective time):
    ``x_s = sum_{j <= s} lr_j / max(lr)``, the cumulative learning rate in units of steps at the
    peak LR (so ``tau = steps`` under a constant LR). SGD moves the weights by ``lr`` per step,
    so a loss that falls as a power law of the distance travelled is a power law in ``tau``:
    warm-up (``tau ~ s^2``) and the cosine's end (``tau`` saturates) stop bending it. Falls back
    to ``steps`` (with the reason) when ``lr`` is absent, of another length, non-finite,
    negative, or all zero. ``steps`` must be sorted.
    """
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    if kind not in TIME_AXES:
        raise ValueError(f"time axis must be one of {TIME_AXES}, got {kind!r}")
    if kind == STEPS:
        return s + 1, STEPS, ""
    if lr is None:
        return s + 1, STEPS, "no lr column: time axis = steps"
    r = np.asarray(lr, dtype=np.float64).reshape(-1)
    if r.shape != s.shape:
        why = f"lr ({r.size}) and steps ({s.size}) differ in length"
    elif not np.all(np.isfinite(r)):
        why = "non-finite lr"
    elif np.any(r < 0) or not np.max(r, initial=0.0) > 0:
        why = "negative or all-zero lr"
    else:
        return np.cumsum(r) / float(np.max(r)), TAU, ""
    return s + 1, STEPS, f"{why}: time axis = steps"


def bin_index(t: ArrayLike, bins_per_decade: int = DEFAULT_BINS_PER_DECADE) -> NDArray[np.int64]:
    """Bin number ``k = floor(B log10 t)`` of each ``t`` (``B`` = ``bins_per_decade``).

    A tiny tolerance puts exact edges such as ``t = 10`` into the bin they open despite
    floating-point ``log10``.
    """
    ta = np.asarray(t, dtype=np.float64)
    return np.floor(np.log10(ta) * bins_per_decade + 1e-9).astype(np.int64)


def bin_sigma(ss: ArrayLike, count: ArrayLike, ybar: ArrayLike) -> FloatArray:
    """Each bin's fit error ``r0 ybar / sqrt(n)`` from the pooled relative variance ``r0^2`` of
    the within-bin sums of squares ``ss`` (module docstring)."""
    ss, n, yb = (np.asarray(v, dtype=np.float64) for v in (ss, count, ybar))
    dof = n - 1
    multi = dof > 0
    rel_ss = float(np.sum(ss[multi] / yb[multi] ** 2))
    pooled_dof = float(np.sum(dof[multi]))
    r0_sq = rel_ss / pooled_dof if pooled_dof > 0 else 0.0
    if r0_sq > 0:
        return np.asarray(np.sqrt(r0_sq) * np.abs(yb) / np.sqrt(n))
    return np.full(yb.shape, float(np.mean(np.abs(yb))) if yb.size else 1.0)


def log_bins(
    t: ArrayLike,
    y: ArrayLike,
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    min_t: float = 1.0,
    max_t: float = np.inf,
) -> Binned:
    """Bin ``(t, y)`` with ``t`` in ``[min_t, max_t]`` on log-spaced bins (module docstring).

    Raises ``ValueError`` if :func:`curve_problem` objects; the fit functions check first and
    return a failed fit instead. Points need not be sorted.
    """
    if bins_per_decade < 1:
        raise ValueError(f"bins_per_decade must be >= 1, got {bins_per_decade}")
    problem = curve_problem(t, y)
    if problem:
        raise ValueError(problem)
    ta = np.asarray(t, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    keep = (ta >= min_t) & (ta <= max_t)
    ta, ya = ta[keep], ya[keep]
    order = np.argsort(ta, kind="stable")
    ta, ya = ta[order], ya[order]
    k = bin_index(ta, bins_per_decade)
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if ta.size else np.zeros(0, np.int64)
    count = np.diff(np.r_[starts, ta.size]).astype(np.int64)

    def bin_sum(v: FloatArray) -> FloatArray:
        return np.add.reduceat(v, starts) if ta.size else np.zeros(0)

    ybar = bin_sum(ya) / np.maximum(count, 1)
    tgeo = np.exp(bin_sum(np.log(ta)) / np.maximum(count, 1))
    # Two-pass variance: per-batch losses sit far from 0 relative to their scatter.
    ss = bin_sum((ya - np.repeat(ybar, count)) ** 2)
    dof = count - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(dof > 0, ss / np.maximum(dof, 1), np.nan)
    std = np.sqrt(var)
    sem = std / np.sqrt(count)
    sigma = bin_sigma(ss, count, ybar)
    kb = k[starts].astype(np.float64)
    return Binned(
        t=tgeo,
        y=ybar,
        sigma=sigma,
        std=std,
        sem=sem,
        count=count,
        lo=10.0 ** (kb / bins_per_decade),
        hi=10.0 ** ((kb + 1) / bins_per_decade),
        t_first=ta[starts] if ta.size else np.zeros(0),
        t_last=ta[np.r_[starts[1:], ta.size] - 1] if ta.size else np.zeros(0),
    )
