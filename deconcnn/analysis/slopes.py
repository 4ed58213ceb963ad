"""Run-level loss-curve rules: the knee (burn-in), ``alpha_full`` and the local ``alpha_early``,
with intervals that survive autocorrelated, heteroscedastic, spiky per-batch noise.

Every fit is made on the log-binned curve (:mod:`curves`, :mod:`fits`), on a time axis ``x``
(steps + 1, or the effective time ``tau``: :func:`curves.time_axis`). The rules here add three
things the bin-level fits cannot see (formulas: ``docs/analysis.md`` sections 6-7):

* **HAC intervals** (:func:`hac_se`). Per-batch losses are autocorrelated (slow drift of the
  weights, AR(1)-like) and their scatter changes over training, so bin means are neither
  independent nor do their within-bin standard errors hold. A weighted least-squares estimate is
  to first order a linear function of the bin means, ``p - p0 = sum_i g_i (ybar_i - f_i)`` (``g``
  = :attr:`fits.Fit.influence`), i.e. ``sum_j u_j eps_j`` over steps with known weights
  ``u_j = g_{bin(j)} / n_{bin(j)}`` (:func:`step_weights`). Its variance is estimated from the
  fit's step residuals: a local scale times a stationary correlation, the AR(1) part taken whole
  and the rest with a Bartlett kernel up to Andrews' (1991) plug-in bandwidth (at least one
  epoch), with what the fit's ``k`` parameters absorbed of the noise added back (``kappa``:
  without it the variance was 0.77-0.79 of the true one on a 3-15 epoch floor fit). Not the
  residual products block by block: a fit's residuals are orthogonal to its
  gradient, and where a few blocks carry most of the influence (warm-up on the tau axis) that
  removed a large share of the variance (``alpha_full`` covered 75-96%). This is the sandwich
  ``H^-1 J'W Sigma W J H^-1`` with a structured HAC ``Sigma``, without refits: a few FFTs over
  the steps.
* **The knee** (:func:`knee_test`): a power law and a broken power law are fitted once from the
  first candidate to the end, the breakpoint restricted to the candidate range; the burn-in is
  there iff ``F = (RSS_pl - RSS_broken) / (RSS_broken / (n - 5))`` exceeds ``KNEE_STAT``. The
  residual scale in the denominator cancels a common misstatement of the bin errors
  (autocorrelation inflates every large bin's variance alike); the breakpoint is chosen to fit,
  so ``F`` has no textbook null law (Davies' problem) and ``KNEE_STAT`` is calibrated by
  simulation of the no-knee null (pure power laws under every noise model of the known-answer
  benchmark): the false-alarm rate is stated, not assumed. (A HAC Wald test of
  ``alpha1 - alpha2`` was tried and dropped: heavy-tailed under the null, no power under AR(1).)
* **alpha_early is local**: its floor comes from the power law fitted from the knee to the
  window's end (never past it), and its standard error includes the floor's through the chain
  rule on the influence functions; the curve after the window cannot move it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage, special

from deconcnn.analysis import fits as F
from deconcnn.analysis.curves import Binned, FloatArray, bin_index, log_bins

# F above which a break is a burn-in. Calibrated with ``benchmarks/analysis_known_answer.py
# --calibrate`` on 900 null draws (pure power laws in steps and in tau under the warm-up + cosine
# and the step schedule, noise 1-30% iid, AR(1) phi 0.98, heteroscedastic, spiky): its 99th
# percentile was 15.4 (95th: 10.8), so a 1% false-alarm rate pooled over those nulls.
KNEE_STAT = 16.0
KNEE_MIN_BINS = F.KNEE_MIN_BINS
# The local noise scale is the RMS residual over this many blocks: short windows without a rare
# spike read as near-noiseless, which makes any small misfit there look autocorrelated.
SCALE_BLOCKS = 5
# The knee's interval is the HAC delta-method interval on ln t_b widened by this factor, calibrated
# like KNEE_STAT: the largest, over the known-answer rows with a knee (breaks at epochs 3, 8, 12
# under 10% iid / AR(1) / heteroscedastic / spiky noise; the smoothly bent offset curve at 1-30%),
# of the 95th percentile of |ln t_b error| / half-width, 60 draws each: 1.58 (offset at 30%; AR(1)
# 1.29-1.51, iid 0.87-1.19). Its estimator is far from linear once its error spans a bin.
KNEE_SE_FACTOR = 1.6
# Fixed-point steps for the fit's share of the residual autocovariance (hac_se's kappa); it is
# k lambda / n, a few per cent, so the steps converge at once.
KAPPA_ITERATIONS = 3


@dataclass(frozen=True)
class Estimate:
    """A parameter with its HAC standard error and 95% interval (NaN with ``reason`` if none)."""

    value: float
    se: float
    lo: float
    hi: float
    dof: int
    reason: str = ""


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, math.nan, 0)


def step_weights(x: FloatArray, curve: Binned, grad: FloatArray) -> FloatArray:
    """Per-step ``u_j = grad_{bin(j)} / n_{bin(j)}`` (0 outside ``curve``'s bins): the estimate
    moves by ``sum_j u_j r_j`` for step residuals ``r``.

    ``grad`` holds one value per bin of ``curve`` (the bins the fit used); ``x`` is the run's
    per-step axis in time order, binned as ``curve`` was (same ``bins_per_decade``).
    """
    u = np.zeros(x.size)
    if not len(curve):
        return u
    bpd = round(1.0 / math.log10(curve.hi[0] / curve.lo[0]))
    k_curve = bin_index(curve.lo, bpd)
    k = _safe_bin_index(x, bpd)
    pos = np.clip(np.searchsorted(k_curve, k), 0, len(curve) - 1)
    inside = (k_curve[pos] == k) & (x >= curve.t_first[pos]) & (x <= curve.t_last[pos])
    p = pos[inside]
    u[inside] = grad[p] / curve.count[p]
    return u


def _safe_bin_index(x: FloatArray, bpd: int) -> np.ndarray:
    """Bin numbers with a sentinel for ``x <= 0`` (never binned)."""
    out = np.full(x.size, np.iinfo(np.int64).min // 2, dtype=np.int64)
    pos = x > 0
    out[pos] = bin_index(x[pos], bpd)
    return out


def _autocov(v: FloatArray, lags: int) -> FloatArray:
    """``sum_j v_j v_{j+l}`` for ``l = 0..lags`` (zero-padded FFT)."""
    n = v.size
    size = sp_fft.next_fast_len(n + lags + 1, real=True)
    f = sp_fft.rfft(v, size)
    return np.asarray(sp_fft.irfft(f * np.conj(f), size)[: lags + 1])


def hac_se(u: FloatArray, r: FloatArray, block: int, k: int = 0) -> tuple[float, int]:
    """Standard error of ``sum_j u_j eps_j`` (steps in time order) from the residuals ``r`` of a
    fit with ``k`` parameters, and its degrees of freedom (module doc; formulas:
    docs/analysis.md section 6).

    Over the steps from the first to the last nonzero ``u``: the local scale ``s_j`` (root mean
    square of ``r`` over ``block`` steps around ``j``), the standardised residuals'
    autocorrelation ``rho_l``, their AR(1) coefficient ``phi`` (lag-1 ``rho``) and the Bartlett
    bandwidth ``L`` from Andrews' (1991) AR(1) plug-in, at least ``block``::

        R_l = phi^l + (1 - l / (L + 1))_+ (rho_l - phi^l)
        var = (1 + kappa) sum_{|l| < n} R_|l| sum_j (u s)_j (u s)_{j+|l|}

    An AR(1) correlation is taken whole (no truncation bias however long its memory), what it
    misses is added up to ``L`` (prewhitening, Andrews & Monahan 1992). The fit absorbed ``k``
    slowly varying directions of the noise, each with its long-run variance ``lambda``, so every
    residual autocovariance is low by ``kappa = k lambda / n`` (in units of the variance, first
    order): ``rho`` and ``phi`` are taken from ``(rho_l + kappa) / (1 + kappa)`` and the scale is
    raised by ``1 + kappa`` (``lambda`` from those, a fixed point). Degrees of freedom
    ``1.5 n / L`` (the Bartlett estimator's variance, ``n`` steps).
    """
    block = max(int(block), 1)
    nz = np.flatnonzero(u)
    if nz.size < 2 or nz[-1] - nz[0] + 1 < 2 * block:
        return math.nan, 0
    u, r = u[nz[0] : nz[-1] + 1], r[nz[0] : nz[-1] + 1]
    n = u.size
    s = np.sqrt(ndimage.uniform_filter1d(r**2, size=min(SCALE_BLOCKS * block, n), mode="nearest"))
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        return math.nan, 0
    e = r / s
    ce = _autocov(e, n - 1)
    rho_fit = ce / ce[0]
    lag = np.arange(n)
    kappa = 0.0
    for _ in range(KAPPA_ITERATIONS):
        rho = (rho_fit + kappa) / (1 + kappa)
        phi = float(np.clip(rho[1], -0.999, 0.999))
        a1 = 4 * phi**2 / ((1 - phi) ** 2 * (1 + phi) ** 2)
        band = int(min(max(1.1447 * (a1 * n) ** (1 / 3), block), n // 2))
        kern = np.clip(1 - lag / (band + 1), 0, None)
        big_r = phi**lag + kern * (rho - phi**lag)
        lam = float(big_r[0] + 2 * np.sum(big_r[1:] * (1 - lag[1:] / n)))  # variance of e's mean, x n
        kappa = k * max(lam, 0.0) / n
    a = _autocov(u * s, n - 1)
    var = (1 + kappa) * float(a[0] + 2 * np.sum(big_r[1:] * a[1:]))
    return math.sqrt(max(var, 0.0)), max(int(1.5 * n / band), 1)


def estimate(value: float, u: FloatArray, fit: F.Fit, x: FloatArray, y: FloatArray, block: int) -> Estimate:
    """``value`` with its HAC standard error (weights ``u``, residuals from ``fit``) and t interval."""
    se, dof = fit_hac_se(u, fit, x, y, block)
    if not math.isfinite(se):
        return dataclasses.replace(NO_ESTIMATE, value=value, reason=f"too few steps for an interval ({dof} dof)")
    q = float(special.stdtrit(dof, 0.975))
    return Estimate(value, se, value - q * se, value + q * se, dof)


def fit_hac_se(u: FloatArray, fit: F.Fit, x: FloatArray, y: FloatArray, block: int) -> tuple[float, int]:
    """:func:`hac_se` of ``sum_j u_j eps_j`` with the residuals of ``fit``, taken relative to the
    fitted curve ``f`` (``sum u r = sum (u f)(r / f)``): per-batch loss noise scales with the
    loss, so relative residuals have a slowly varying scale, which a wide window can estimate."""
    f = F.model_curve(fit, x)
    with np.errstate(all="ignore"):
        return hac_se(u * f, (y - f) / f, block, fit.k)


def fit_estimate(fit: F.Fit, param: str, x: FloatArray, y: FloatArray, curve: Binned, block: int) -> Estimate:
    """One parameter of ``fit`` (made on ``curve``) with its HAC interval."""
    if not fit.ok:
        return dataclasses.replace(NO_ESTIMATE, reason=fit.reason)
    return estimate(fit.params[param], step_weights(x, curve, fit.influence[param]), fit, x, y, block)


@dataclass(frozen=True)
class KneeTest:
    """The burn-in by a calibrated break test. Positions in ``x`` (the fit's time axis).

    ``knee_x`` is the breakpoint when ``detected``, else the first candidate (no burn-in);
    ``lo``/``hi`` its 95% interval (the breakpoint's, on ``ln t_b``, HAC widened by
    ``KNEE_SE_FACTOR``; without a detection
    ``[first, upper end of the breakpoint's interval]``: a burn-in up to there is not excluded).
    """

    knee_x: float
    lo: float
    hi: float
    detected: bool
    stat: float
    broken: F.Fit
    power_law: F.Fit
    reason: str = ""


def knee_test(
    x: FloatArray,
    y: FloatArray,
    curve: Binned,
    first: float,
    break_range: tuple[float, float],
    block: int,
    stat_crit: float = KNEE_STAT,
) -> KneeTest:
    """Fit a power law and a broken power law (breakpoint in ``break_range``) on ``curve``'s
    bins from ``first`` on; the knee is the breakpoint iff ``stat > stat_crit`` (module doc)."""
    window = curve.window(first)
    pl = F.fit_power_law(window)
    if len(window) < KNEE_MIN_BINS:
        reason = f"window has {len(window)} < {KNEE_MIN_BINS} bins"
        failed = F.failed_fit(F.BROKEN, reason)
        return KneeTest(math.nan, math.nan, math.nan, False, math.nan, failed, pl, reason)
    first_x = float(window.t_first[0])
    broken = F.fit_broken_power_law(window, break_range=break_range)
    if not broken.ok:
        return KneeTest(first_x, first_x, first_x, False, math.nan, broken, pl, f"no break test: {broken.reason}")
    n = broken.n
    stat = (pl.rss - broken.rss) / (broken.rss / (n - broken.k)) if pl.ok and broken.rss > 0 else math.nan
    t_b = broken.params["t_b"]
    se_ln, dof = fit_hac_se(step_weights(x, window, broken.influence["t_b"] / t_b), broken, x, y, block)
    q = float(special.stdtrit(max(dof, 1), 0.975))
    half = min(q * KNEE_SE_FACTOR * se_ln, 700.0)  # an unidentified breakpoint: an interval of (0, inf), no overflow
    b_lo, b_hi = t_b * math.exp(-half), t_b * math.exp(half)
    if stat > stat_crit:
        return KneeTest(t_b, b_lo, b_hi, True, stat, broken, pl)
    hi = b_hi if math.isfinite(b_hi) else first_x
    return KneeTest(first_x, first_x, max(first_x, min(hi, break_range[1])), False, stat, broken, pl)


def full_slope(x: FloatArray, y: FloatArray, start: float, bpd: int, block: int) -> tuple[Estimate, Estimate, Binned]:
    """alpha and c of the power law on the steps with ``x >= start``, HAC intervals."""
    curve = log_bins(x, y, bpd, min_t=start)
    fit = F.fit_power_law(curve)
    return fit_estimate(fit, "alpha", x, y, curve, block), fit_estimate(fit, "c", x, y, curve, block), curve


@dataclass(frozen=True)
class EarlySlope:
    """``alpha_early`` on ``[x0, x1]`` with the floor from the power law on ``[start, x1]``."""

    alpha: Estimate
    c: Estimate
    n_bins: int
    floor_fit: F.Fit
    window_fit: F.Fit
    exponential: F.Fit
    reason: str = ""


def early_slope(x: FloatArray, y: FloatArray, start: float, x0: float, x1: float, bpd: int, block: int) -> EarlySlope:
    """Local power-law exponent on the window ``[x0, x1]`` (module doc).

    The floor ``c`` is the power law's on the steps with ``start <= x <= x1`` (``start`` = the
    knee, at most ``x0``): the same curve before and inside the window, never after it. alpha
    is then fitted on the window's bins (those starting at or after ``x0``) with ``c`` fixed.
    Its influence is ``g_alpha + (d alpha / d c) g_c`` with ``d alpha / d c = -sum_i g_alpha,i``
    (raising the floor = lowering every bin), so the interval carries the floor's uncertainty
    (HAC on the floor fit's residuals, which cover the window). ``exponential``: the exponential on ``[start, x1]``, for
    the model check.
    """
    span = log_bins(x, y, bpd, min_t=start, max_t=x1)
    win = span.window(x0)
    floor = F.fit_power_law(span)
    expo = F.fit_exponential(span)
    reason = ""
    if float(np.max(x)) < x1:
        reason = f"the curve ends at x={float(np.max(x)):g}, before the window's end (x={x1:g})"
    elif not floor.ok:
        reason = f"floor fit failed: {floor.reason}"
    if reason:
        failed = F.failed_fit(F.POWER_LAW_FIXED_C, reason)
        return EarlySlope(NO_ESTIMATE, NO_ESTIMATE, len(win), floor, failed, expo, reason)
    wfit = F.fit_power_law_fixed_c(win, floor.params["c"])
    c_est = fit_estimate(floor, "c", x, y, span, block)
    if not wfit.ok:
        return EarlySlope(NO_ESTIMATE, c_est, len(win), floor, wfit, expo, wfit.reason)
    g_alpha = wfit.influence["alpha"]
    u = step_weights(x, win, g_alpha) - float(np.sum(g_alpha)) * step_weights(x, span, floor.influence["c"])
    alpha = estimate(wfit.params["alpha"], u, floor, x, y, block)
    return EarlySlope(alpha, c_est, len(win), floor, wfit, expo)
