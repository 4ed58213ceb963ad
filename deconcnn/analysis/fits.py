"""Loss-curve model fits on a log-binned curve, model selection by AIC, and the burn-in ("knee").

Models (``t`` = step + 1 > 0, ``L`` = loss; ``a > 0``, ``c >= 0`` because cross-entropy is >= 0)
-------------------------------------------------------------------------------------------------
* ``power_law``: ``L = c + a (t / t_ref)^-alpha``, ``0 <= alpha <= 20``, and ``c >= -min L``,
  not ``c >= 0``: over a short range the floor's estimate scatters by more than the true floor
  (0.02 nats in the known-answer scenarios, 0 for a network that interpolates), and a bound at 0
  clips the low half, whose alphas are the low ones: alpha was +6.8% after a break at epoch 8
  under AR(1) noise (docs/analysis.md sections 7, 16). ``-min L`` keeps the fit off the
  degenerate ``c -> -inf, alpha -> 0`` direction (an exponential curve). ``t_ref`` (the
  geometric mean of the window's bin ``t``) only re-expresses ``a`` as the excess loss over the
  floor at ``t_ref`` -- the same family as ``c + A t^-alpha`` with ``A = a t_ref^alpha`` -- and
  removes the strong ``a``/``alpha`` correlation that slows the optimiser.
* ``exponential``: ``L = c + a exp(-(t - t_ref) / tau)``, ``tau > 0``, ``t_ref`` = first bin
  ``t`` of the window (``a`` = excess at the window start).
* ``broken_power_law`` (two regimes, continuous at the breakpoint ``t_b``)::

      L = c + a (t / t_b)^-alpha1   for t <  t_b
      L = c + a (t / t_b)^-alpha2   for t >= t_b

  i.e. the excess ``L - c`` is a straight line in log-log with slope ``-alpha1`` before and
  ``-alpha2`` after ``t_b``, and ``a`` is the excess at ``t_b``. ``0 <= alpha1, alpha2 <= 20``;
  ``t_b`` is a fitted parameter (5 in all), constrained to lie between the 3rd bin and the 3rd
  bin from the end so each regime has >= 2 bins of its own. Starting values come from a profile
  over breakpoints (every admissible bin ``t``) and floors (``c`` grid): for each pair, a
  weighted linear fit of ``ln(L - c)`` on ``[1, min(u, 0), max(u, 0)]``, ``u = ln(t / t_b)``;
  the 3 best pairs (distinct ``t_b``) are refined by nonlinear least squares with ``t_b`` free
  and the lowest residual wins.

Starting values of the other two come the same way (profile over ``c`` in ``[0, 0.99 min L]``,
weighted linear fit of ``ln(L - c)`` on ``ln t`` or on ``t``).

Estimation
----------
Weighted least squares on the bins: minimise ``RSS = sum_i ((y_i - f(t_i)) / sigma_i)^2`` with
``sigma_i`` the bin's standard error (``curves.log_bins``), trust-region reflective
(``scipy.optimize.least_squares``) with analytic Jacobians. The data are divided by their median
before fitting and the results multiplied back, so a change of units (nats -> bits) gives the
same exponents, ``tau``, ``t_b``, RSS and AIC up to rounding (:func:`units.units_check`).

* ``stderr``: square roots of the diagonal of ``s^2 (J^T J)^-1`` (``J`` the weighted Jacobian
  at the optimum, ``s^2 = RSS / (n - k)``), i.e. the covariance scaled by the observed scatter
  (``absolute_sigma=False`` in ``curve_fit`` terms): bins' standard errors fix the relative
  weights, the residuals fix the scale, so model misfit widens the intervals.
* ``ci``: 95% interval ``p +- t_{0.975, n-k} * stderr``; for ``t_b`` it is computed on
  ``ln t_b`` and exponentiated (asymmetric). At a bound (e.g. ``c = 0``) the interval is the
  local one, not truncated.
* ``boot_ci`` (``n_boot > 0``): 2.5/97.5 percentiles over ``n_boot`` wild-bootstrap refits
  (batched Levenberg-Marquardt from the optimum, :func:`_refine_batch`),
  ``y*_i = f_i + r_i v_i`` with ``r`` the residuals and ``v_i = +-1`` (Rademacher) -- keeps each
  bin's own residual size, needs no normality.
* ``r2``: weighted ``1 - RSS / sum_i w_i (y_i - ybar_w)^2``, ``w_i = sigma_i^-2``.
* ``resid_scale``: ``s = sqrt(RSS / (n - k))``: ~1 when the model and the bins' standard errors
  are both right; > 1 means misfit or extra (correlated) noise.
* ``aic = n ln(RSS / n) + 2k``, ``aicc = aic + 2k(k + 1) / (n - k - 1)`` and
  ``bic = n ln(RSS / n) + k ln n`` (Gaussian residuals, variance profiled out; with weights the
  weighted RSS, which is unit-free). ``n`` = bins, ``k`` = fitted parameters.

A fit never raises: too few bins (``n < k + 2``), bad data (:func:`curves.curve_problem`), all
values equal, or an optimiser failure give ``ok=False`` with a ``reason`` and NaN numbers.

Model selection (:func:`select_model`)
--------------------------------------
Criterion AICc by default (AIC and BIC on request). ``delta_m = aicc_m - min aicc``, weight
``w_m = exp(-delta_m / 2) / sum exp(-delta / 2)`` (Akaike weights). ``best`` = lowest AICc;
``chosen`` = the model with the fewest parameters among those with ``delta <= threshold`` (2),
ties (power law vs exponential, both k = 3) broken by lower AICc. Why AICc and the parsimony
rule rather than "lowest AIC": with ~20-45 bins and k = 5, n/k is far below the ~40 where plain
AIC is reliable, and the broken power law nests the power law with a breakpoint chosen to fit
the noise -- on noisy pure power laws (45 bins) "lowest AIC" picks it in ~15-30% of draws,
"lowest AICc within 2, fewest parameters" in ~3-8% (``tests/analysis/test_fits.py``).

The knee (burn-in) is found by :func:`slopes.knee_test`, a calibrated break test on these fits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from deconcnn.analysis.curves import (
    DEFAULT_BINS_PER_DECADE,
    Binned,
    FloatArray,
    curve_problem,
    log_bins,
)

POWER_LAW = "power_law"
EXPONENTIAL = "exponential"
BROKEN = "broken_power_law"
POWER_LAW_FIXED_C = "power_law_fixed_c"
MODELS = (POWER_LAW, EXPONENTIAL, BROKEN)
PARAMS: dict[str, tuple[str, ...]] = {
    POWER_LAW: ("a", "alpha", "c"),
    EXPONENTIAL: ("a", "tau", "c"),
    BROKEN: ("a", "alpha1", "alpha2", "t_b", "c"),
    POWER_LAW_FIXED_C: ("a", "alpha", "c"),
}
AIC_THRESHOLD = 2.0
KNEE_MIN_BINS = 10
Criterion = Literal["aic", "aicc", "bic"]
MAX_EXPONENT = 20.0
_C_GRID = np.linspace(0.0, 0.99, 25)
_BREAK_MARGIN = 2  # bins reserved on each side of a breakpoint
_N_BREAK_STARTS = 3
# Bootstrap refits start at the optimum and feed 2.5/97.5 percentiles of 20-odd draws: this many
# Levenberg-Marquardt steps agree with a converged refit far below that Monte Carlo error.
BOOT_STEPS = 30


@dataclass(frozen=True)
class Fit:
    """One model fitted on one window. Numbers are NaN when ``ok`` is False.

    ``params``/``stderr``/``ci`` are keyed by ``PARAMS[model]``; ``t_start``/``t_end`` are the
    first and last step in the fitted bins; ``t_ref`` the reference step of ``a`` (module doc).
    """

    model: str
    ok: bool
    reason: str
    n: int
    k: int
    t_start: float
    t_end: float
    t_ref: float
    params: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot_ci: dict[str, tuple[float, float]] | None = None
    rss: float = math.nan
    r2: float = math.nan
    resid_scale: float = math.nan
    aic: float = math.nan
    aicc: float = math.nan
    bic: float = math.nan
    # d(reported parameter) / d(bin mean), per bin: the linearised estimator, for HAC intervals
    influence: dict[str, FloatArray] = field(default_factory=dict, repr=False)

    def as_row(self) -> dict[str, Any]:
        """Flat dict: fit columns plus ``<p>, <p>_se, <p>_lo, <p>_hi, <p>_boot_lo, <p>_boot_hi``."""
        row: dict[str, Any] = {
            "model": self.model,
            "ok": self.ok,
            "reason": self.reason,
            "n_bins": self.n,
            "k": self.k,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "t_ref": self.t_ref,
            "rss": self.rss,
            "r2": self.r2,
            "resid_scale": self.resid_scale,
            "aic": self.aic,
            "aicc": self.aicc,
            "bic": self.bic,
        }
        for p in PARAMS[self.model]:
            lo, hi = self.ci.get(p, (math.nan, math.nan))
            blo, bhi = (self.boot_ci or {}).get(p, (math.nan, math.nan))
            row |= {
                p: self.params.get(p, math.nan),
                f"{p}_se": self.stderr.get(p, math.nan),
                f"{p}_lo": lo,
                f"{p}_hi": hi,
                f"{p}_boot_lo": blo,
                f"{p}_boot_hi": bhi,
            }
        return row


@dataclass(frozen=True)
class _Spec:
    """A model in internal units: ``f(p, x)``, its Jacobian, bounds, and the map to reported values.

    ``x`` is the model's transformed time axis; ``to_report(p, s)`` maps internal parameters to
    reported ones given the data scale ``s`` (each coordinate monotone, so intervals map too).
    """

    model: str
    f: Callable[[FloatArray, FloatArray], FloatArray]
    jac: Callable[[FloatArray, FloatArray], FloatArray]
    lower: FloatArray
    upper: FloatArray
    to_report: Callable[[FloatArray, float], FloatArray]
    slope: Callable[[FloatArray, float], FloatArray]  # d report / d internal, per coordinate


def failed_fit(model: str, reason: str, curve: Binned | None = None) -> Fit:
    """A ``Fit`` with ``ok=False``, the ``reason``, and NaN numbers (window from ``curve``)."""
    n, t0, t1 = 0, math.nan, math.nan
    if curve is not None and len(curve):
        n, t0, t1 = len(curve), float(curve.t_first[0]), float(curve.t_last[-1])
    return Fit(model=model, ok=False, reason=reason, n=n, k=_n_params(model), t_start=t0, t_end=t1, t_ref=math.nan)


def _n_params(model: str) -> int:
    """Fitted parameters: ``c`` is given, not fitted, in ``power_law_fixed_c``."""
    return 2 if model == POWER_LAW_FIXED_C else len(PARAMS[model])


def _wls_line(x: FloatArray, z: FloatArray, w: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Weighted least-squares line ``z = b0 + b1 x`` along the last axis (batched)."""
    sw = w.sum(-1)
    mx = (w * x).sum(-1) / sw
    mz = (w * z).sum(-1) / sw
    sxx = (w * (x - mx[..., None]) ** 2).sum(-1)
    b1 = (w * (x - mx[..., None]) * (z - mz[..., None])).sum(-1) / np.where(sxx > 0, sxx, np.nan)
    return mz - b1 * mx, b1


def _c_grid_log_fits(x: FloatArray, y: FloatArray, sg: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For each floor ``c`` of the grid: ``ln(y - c)`` linear in ``x`` (weights from ``sigma``).

    Returns ``(c, b0, b1)`` arrays over the grid. Log-space weights ``((y - c) / sigma)^2`` are
    the delta-method inverse variances of ``ln(y - c)``.
    """
    c = _C_GRID * float(np.min(y))
    ex = y[None, :] - c[:, None]
    b0, b1 = _wls_line(np.broadcast_to(x, ex.shape), np.log(ex), (ex / sg) ** 2)
    return c, b0, b1


def _power_law_spec(c_min: float) -> _Spec:
    def f(p: FloatArray, u: FloatArray) -> FloatArray:
        return p[2] + p[0] * np.exp(-p[1] * u)

    def jac(p: FloatArray, u: FloatArray) -> FloatArray:
        e = np.exp(-p[1] * u)
        return np.stack([e, -p[0] * u * e, np.ones_like(e)], axis=-1)

    return _Spec(
        POWER_LAW,
        f,
        jac,
        np.array([0.0, 0.0, c_min]),
        np.array([np.inf, MAX_EXPONENT, np.inf]),
        lambda p, s: np.array([p[0] * s, p[1], p[2] * s]),
        lambda p, s: np.array([s, 1.0, s]),
    )


def _fixed_c_spec(c: float) -> _Spec:
    def f(p: FloatArray, u: FloatArray) -> FloatArray:
        return c + p[0] * np.exp(-p[1] * u)

    def jac(p: FloatArray, u: FloatArray) -> FloatArray:
        e = np.exp(-p[1] * u)
        return np.stack([e, -p[0] * u * e], axis=-1)

    return _Spec(
        POWER_LAW_FIXED_C,
        f,
        jac,
        np.array([0.0, 0.0]),
        np.array([np.inf, MAX_EXPONENT]),
        lambda p, s: np.array([p[0] * s, p[1]]),
        lambda p, s: np.array([s, 1.0]),
    )


def _exponential_spec(span: float) -> _Spec:
    # x = (t - t_ref) / span in [0, 1]; internal tau' = tau / span keeps the problem O(1).
    def f(p: FloatArray, v: FloatArray) -> FloatArray:
        return p[2] + p[0] * np.exp(-v / p[1])

    def jac(p: FloatArray, v: FloatArray) -> FloatArray:
        e = np.exp(-v / p[1])
        return np.stack([e, p[0] * v / p[1] ** 2 * e, np.ones_like(e)], axis=-1)

    return _Spec(
        EXPONENTIAL,
        f,
        jac,
        np.array([0.0, 1e-6, 0.0]),
        np.array([np.inf, 1e3, np.inf]),
        lambda p, s: np.array([p[0] * s, p[1] * span, p[2] * s]),
        lambda p, s: np.array([s, span, s]),
    )


def _broken_spec(t_ref: float, lb_lo: float, lb_hi: float) -> _Spec:
    # x = ln(t / t_ref); internal p[3] = ln(t_b / t_ref).
    def f(p: FloatArray, x: FloatArray) -> FloatArray:
        u = x - p[3]
        return p[4] + p[0] * np.exp(-p[1] * np.minimum(u, 0) - p[2] * np.maximum(u, 0))

    def jac(p: FloatArray, x: FloatArray) -> FloatArray:
        u = x - p[3]
        lo, hi = np.minimum(u, 0), np.maximum(u, 0)
        e = np.exp(-p[1] * lo - p[2] * hi)
        d_break = p[0] * e * np.where(u < 0, p[1], p[2])
        return np.stack([e, -p[0] * lo * e, -p[0] * hi * e, d_break, np.ones_like(e)], axis=-1)

    return _Spec(
        BROKEN,
        f,
        jac,
        np.array([0.0, 0.0, 0.0, lb_lo, 0.0]),
        np.array([np.inf, MAX_EXPONENT, MAX_EXPONENT, lb_hi, np.inf]),
        lambda p, s: np.array([p[0] * s, p[1], p[2], t_ref * np.exp(p[3]), p[4] * s]),
        lambda p, s: np.array([s, 1.0, 1.0, t_ref * np.exp(p[3]), s]),
    )


def _refine(spec: _Spec, x: FloatArray, y: FloatArray, sg: FloatArray, p0: FloatArray) -> tuple[FloatArray, float]:
    """Nonlinear weighted least squares from ``p0`` (clipped into the bounds); ``(p, RSS)``."""
    span = spec.upper - spec.lower
    pad = np.where(np.isfinite(span), 1e-9 * span, 1e-12)
    start = np.clip(p0, spec.lower + pad, spec.upper - pad)
    with np.errstate(over="ignore", invalid="ignore"):
        res = optimize.least_squares(
            lambda p: (spec.f(p, x) - y) / sg,
            start,
            jac=lambda p: spec.jac(p, x) / sg[:, None],
            bounds=(spec.lower, spec.upper),
            method="trf",
            x_scale="jac",
            ftol=1e-10,
            xtol=1e-10,
            gtol=1e-10,
            max_nfev=400,
        )
    return res.x, float(2.0 * res.cost)


def _refine_batch(spec: _Spec, x: FloatArray, y: FloatArray, sg: FloatArray, p0: FloatArray) -> FloatArray:
    """Weighted least squares of every row of ``y`` (``(B, n)``) from ``p0``: the bootstrap refits.

    Levenberg-Marquardt steps on all rows at once, kept inside the bounds by clipping: the refits
    start at the optimum of a nearby curve, where a few steps converge, and one scipy call per
    refit (its set-up, not its arithmetic) made them two thirds of ``analyze_run``'s time.
    """
    p = np.tile(p0, (y.shape[0], 1))
    damp = np.full(y.shape[0], 1e-3)

    def resid(q: FloatArray) -> FloatArray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray((spec.f(q.T[..., None], x) - y) / sg)

    r = resid(p)
    cost = np.sum(r**2, axis=1)
    for _ in range(BOOT_STEPS):
        with np.errstate(over="ignore", invalid="ignore"):
            jw = spec.jac(p.T[..., None], x) / sg[:, None]  # (B, n, k)
        a = np.einsum("bni,bnj->bij", jw, jw)
        g = np.einsum("bni,bn->bi", jw, r)
        diag = np.maximum(np.einsum("bii->bi", a), 1e-12)  # a flat direction: no singular system
        with np.errstate(all="ignore"):
            step = np.linalg.solve(a + (damp[:, None] * diag)[..., None] * np.eye(p.shape[1]), -g[..., None])[..., 0]
        trial = np.clip(p + step, spec.lower, spec.upper)
        r_trial = resid(trial)
        cost_trial = np.sum(r_trial**2, axis=1)
        better = np.isfinite(cost_trial) & (cost_trial < cost)
        p[better], r[better], cost[better] = trial[better], r_trial[better], cost_trial[better]
        damp = np.where(better, damp * 0.3, damp * 10.0)
    return p


def _summarise(
    spec: _Spec,
    curve: Binned,
    t_ref: float,
    x: FloatArray,
    y: FloatArray,
    sg: FloatArray,
    scale: float,
    p: FloatArray,
    rss: float,
    n_boot: int,
    seed: int,
) -> Fit:
    """Turn an optimum into a :class:`Fit`: covariance, intervals, bootstrap, R^2, AIC/BIC."""
    n, k = y.size, p.size
    names = PARAMS[spec.model][:k]
    dof = n - k
    s2 = rss / dof
    jw = spec.jac(p, x) / sg[:, None]
    with np.errstate(all="ignore"):
        cov = np.linalg.pinv(jw.T @ jw) * s2
    se_int = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if np.linalg.matrix_rank(jw) < k:
        se_int[:] = np.nan  # not identifiable here: no honest interval
    q = float(special.stdtrit(dof, 0.975))  # the t quantile; scipy.stats' ppf costs 0.3 ms a call
    rep = spec.to_report(p, scale)
    lo = spec.to_report(p - q * se_int, scale)
    hi = spec.to_report(p + q * se_int, scale)
    se = np.abs(spec.slope(p, scale)) * se_int
    with np.errstate(all="ignore"):
        infl = np.linalg.pinv(jw.T @ jw) @ (jw / sg[:, None]).T * (spec.slope(p, scale) / scale)[:, None]
    boot = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        fitted = spec.f(p, x)
        resid = y - fitted
        y_star = fitted + resid * rng.choice((-1.0, 1.0), size=(n_boot, n))
        draws = spec.to_report(_refine_batch(spec, x, y_star, sg, p).T, scale).T
        blo, bhi = np.percentile(draws, [2.5, 97.5], axis=0)
        boot = {nm: (float(blo[i]), float(bhi[i])) for i, nm in enumerate(names)}
    w = sg**-2
    ybar = float(np.sum(w * y) / np.sum(w))
    tss = float(np.sum(w * (y - ybar) ** 2))
    ll_term = n * math.log(max(rss, np.finfo(float).tiny) / n)
    return Fit(
        model=spec.model,
        ok=True,
        reason="",
        n=n,
        k=k,
        t_start=float(curve.t_first[0]),
        t_end=float(curve.t_last[-1]),
        t_ref=t_ref,
        params={nm: float(rep[i]) for i, nm in enumerate(names)},
        stderr={nm: float(se[i]) for i, nm in enumerate(names)},
        ci={nm: (float(lo[i]), float(hi[i])) for i, nm in enumerate(names)},
        boot_ci=boot,
        rss=rss,
        r2=1.0 - rss / tss if tss > 0 else math.nan,
        resid_scale=math.sqrt(s2),
        aic=ll_term + 2 * k,
        aicc=ll_term + 2 * k + 2 * k * (k + 1) / (n - k - 1),
        bic=ll_term + k * math.log(n),
        influence={nm: infl[i] for i, nm in enumerate(names)},
    )


def _check(curve: Binned, k: int) -> str:
    if len(curve) < k + 2:
        return f"too few bins: {len(curve)} < {k + 2} (parameters + 2)"
    if not (np.all(np.isfinite(curve.y)) and np.all(np.isfinite(curve.sigma))):
        return "non-finite bin values"
    if np.any(curve.y <= 0):
        return "non-positive loss (fits assume a positive loss)"
    # bin means of constant data differ by rounding only
    if np.ptp(curve.y) <= 1e-12 * np.max(np.abs(curve.y)):
        return "all values equal (nothing to fit)"
    if not np.all(curve.sigma > 0):
        return "zero standard error in a bin"
    return ""


def _broken_starts(x: FloatArray, y: FloatArray, sg: FloatArray, xb_lo: float, xb_hi: float) -> FloatArray:
    """Starting values ``(a, alpha1, alpha2, ln(t_b / t_ref), c)`` over a breakpoint x floor grid.

    For each floor ``c`` (every other value of the grid) and breakpoint ``x_b`` (an admissible
    bin), weighted linear least squares of ``ln(y - c)`` on
    ``[1, min(x - x_b, 0), max(x - x_b, 0)]``, batched as 3x3 normal equations.
    """
    m = _BREAK_MARGIN
    xb = x[m : x.size - m]
    xb = xb[(xb >= xb_lo) & (xb <= xb_hi)]
    c = _C_GRID[::2] * float(np.min(y))
    ex = y[None, :] - c[:, None]  # (C, n)
    z = np.log(ex)
    w = (ex / sg) ** 2
    u = x[None, :] - xb[:, None]  # (B, n)
    design = np.stack([np.ones_like(u), np.minimum(u, 0), np.maximum(u, 0)], axis=-1)  # (B,n,3)
    wd = w[:, None, :, None] * design[None]  # (C,B,n,3)
    normal = np.einsum("cbni,bnj->cbij", wd, design)
    rhs = np.einsum("cbni,cn->cbi", wd, z)
    with np.errstate(all="ignore"):
        beta = np.linalg.solve(normal + 1e-12 * np.eye(3), rhs[..., None])[..., 0]  # (C,B,3)
    ci, bi = np.meshgrid(np.arange(c.size), np.arange(xb.size), indexing="ij")
    return np.stack([np.exp(beta[..., 0]), -beta[..., 1], -beta[..., 2], xb[bi], c[ci]], axis=-1).reshape(-1, 5)


def _prepare(
    model: str,
    curve: Binned,
    y: FloatArray,
    sg: FloatArray,
    c_fixed: float | None,
    break_range: tuple[float, float] | None = None,
    c_min: float | None = None,
) -> tuple[_Spec, FloatArray, float, FloatArray] | str:
    """Model spec, its time axis ``x``, ``t_ref`` and candidate starting values (rows)."""
    t = curve.t
    if model == EXPONENTIAL:
        t_ref = float(t[0])
        span = float(t[-1] - t[0])
        x = (t - t_ref) / span
        c, b0, b1 = _c_grid_log_fits(x, y, sg)
        # A non-decaying log-line has no tau: start such floors at tau = the window length.
        tau = np.where(b1 < 0, -1.0 / np.where(b1 < 0, b1, -1.0), 1.0)
        return _exponential_spec(span), x, t_ref, np.stack([np.exp(b0), tau, c], axis=1)
    t_ref = float(np.exp(np.mean(np.log(t))))
    x = np.log(t / t_ref)
    if model == POWER_LAW:
        c, b0, b1 = _c_grid_log_fits(x, y, sg)
        floor = -float(np.min(y)) if c_min is None else c_min
        return _power_law_spec(floor), x, t_ref, np.stack([np.exp(b0), -b1, c], axis=1)
    if model == BROKEN:
        m = _BREAK_MARGIN
        lb_lo, lb_hi = float(x[m]), float(x[-1 - m])
        if break_range is not None:
            lb_lo = max(lb_lo, math.log(break_range[0] / t_ref))
            lb_hi = min(lb_hi, math.log(break_range[1] / t_ref))
        if not lb_lo < lb_hi:
            return "no admissible breakpoint (the break range leaves fewer than 2 bins on a side)"
        return _broken_spec(t_ref, lb_lo, lb_hi), x, t_ref, _broken_starts(x, y, sg, lb_lo, lb_hi)
    assert c_fixed is not None
    ex = y - c_fixed
    above = ex > 0
    if above.sum() < 2:
        return "fewer than 2 bins above the fixed floor c"
    b0, b1 = _wls_line(x[above], np.log(ex[above]), (ex[above] / sg[above]) ** 2)
    return _fixed_c_spec(c_fixed), x, t_ref, np.array([[np.exp(b0), -b1]])


def _fit(
    model: str,
    curve: Binned,
    n_boot: int = 0,
    seed: int = 0,
    c_fixed: float | None = None,
    break_range: tuple[float, float] | None = None,
    c_min: float | None = None,
) -> Fit:
    """Checks, scaling, starting values, refinement from the best start(s), summary.

    Never raises. The broken power law is refined from the best start of each of the
    ``_N_BREAK_STARTS`` best breakpoints (its residual surface has a local minimum per
    regime assignment); the smooth models from their single best start.
    """
    k = _n_params(model)
    problem = _check(curve, k)
    if problem:
        return failed_fit(model, problem, curve)
    scale = float(np.median(curve.y))
    y, sg = curve.y / scale, curve.sigma / scale
    try:
        fixed = None if c_fixed is None else c_fixed / scale
        prep = _prepare(model, curve, y, sg, fixed, break_range, None if c_min is None else c_min / scale)
        if isinstance(prep, str):
            return failed_fit(model, prep, curve)
        spec, x, t_ref, cands = prep
        cands = np.clip(cands[np.all(np.isfinite(cands), axis=1)], spec.lower, spec.upper)
        if cands.size == 0:
            return failed_fit(model, "no finite starting values", curve)
        with np.errstate(over="ignore", invalid="ignore"):
            rss0 = np.sum(((spec.f(cands.T[..., None], x) - y) / sg) ** 2, axis=-1)
        starts: list[FloatArray] = []
        for i in np.argsort(rss0):
            if len(starts) == (_N_BREAK_STARTS if model == BROKEN else 1):
                break
            if model != BROKEN or all(cands[i, 3] != s[3] for s in starts):
                starts.append(cands[i])
        best = min((_refine(spec, x, y, sg, p0) for p0 in starts), key=lambda r: r[1])
        if not math.isfinite(best[1]):
            return failed_fit(model, "optimiser returned a non-finite residual", curve)
        fit = _summarise(spec, curve, t_ref, x, y, sg, scale, best[0], best[1], n_boot, seed)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as err:
        return failed_fit(model, f"optimiser failed: {err}", curve)
    return dataclasses.replace(fit, t_ref=fit.params["t_b"]) if model == BROKEN else fit


def fit_power_law(curve: Binned, *, n_boot: int = 0, seed: int = 0, c_min: float | None = None) -> Fit:
    """``L = c + a (t / t_ref)^-alpha`` on the binned ``curve`` (module docstring); ``c >= c_min``
    (default ``-min L``)."""
    return _fit(POWER_LAW, curve, n_boot, seed, c_min=c_min)


def fit_exponential(curve: Binned, *, n_boot: int = 0, seed: int = 0) -> Fit:
    """``L = c + a exp(-(t - t_ref) / tau)`` on the binned ``curve``."""
    return _fit(EXPONENTIAL, curve, n_boot, seed)


def fit_broken_power_law(
    curve: Binned, *, n_boot: int = 0, seed: int = 0, break_range: tuple[float, float] | None = None
) -> Fit:
    """``L = c + a (t / t_b)^-alpha1`` before ``t_b``, ``^-alpha2`` after (continuous).

    ``break_range`` ``(lo, hi)`` (in ``t``) further restricts ``t_b``.
    """
    return _fit(BROKEN, curve, n_boot, seed, break_range=break_range)


def fit_power_law_fixed_c(curve: Binned, c: float) -> Fit:
    """``L = c + a (t / t_ref)^-alpha`` with the floor ``c`` given (2 fitted parameters)."""
    fit = _fit(POWER_LAW_FIXED_C, curve, c_fixed=c)
    return dataclasses.replace(fit, params={**fit.params, "c": float(c)}) if fit.ok else fit


def model_curve(fit: Fit, t: ArrayLike) -> FloatArray:
    """The fitted model's loss at ``t`` (NaN for a failed fit)."""
    ta = np.asarray(t, dtype=np.float64)
    if not fit.ok:
        return np.full(ta.shape, np.nan)
    p = fit.params
    if fit.model == EXPONENTIAL:
        return p["c"] + p["a"] * np.exp(-(ta - fit.t_ref) / p["tau"])
    if fit.model == BROKEN:
        u = np.log(ta / p["t_b"])
        return p["c"] + p["a"] * np.exp(-p["alpha1"] * np.minimum(u, 0) - p["alpha2"] * np.maximum(u, 0))
    return p["c"] + p["a"] * (ta / fit.t_ref) ** -p["alpha"]


def fit_models(curve: Binned, *, n_boot: int = 0, seed: int = 0) -> dict[str, Fit]:
    """All three models on the same bins, keyed by model name (``MODELS`` order)."""
    return {m: _fit(m, curve, n_boot, seed) for m in MODELS}


def select_model(
    fits: Mapping[str, Fit] | Sequence[Fit], threshold: float = AIC_THRESHOLD, criterion: Criterion = "aicc"
) -> dict[str, Any]:
    """Compare fits made on the same bins (module docstring, "Model selection").

    ``criterion`` is the :class:`Fit` field compared (``aicc`` by default; ``aic``, ``bic``).
    Returns ``best`` (lowest criterion), ``chosen`` (fewest parameters within ``threshold`` of
    the lowest, ties by the criterion), ``delta`` and ``weight`` (``exp(-delta/2)``
    normalised: Akaike weights for ``aic``/``aicc``) per model name, and ``reason`` (``""``, or
    why nothing was chosen). Failed fits take no part (absent from the dicts).
    """
    items = list(fits.values()) if isinstance(fits, Mapping) else list(fits)
    ok = [f for f in items if f.ok and math.isfinite(getattr(f, criterion))]
    reason = ""
    if not ok:
        reason = "no successful fit"
    elif len({(f.t_start, f.t_end, f.n) for f in ok}) > 1:
        reason = "fits are on different bins (criteria not comparable)"
    if reason:
        return {"best": None, "chosen": None, "delta": {}, "weight": {}, "reason": reason}
    value = {f.model: float(getattr(f, criterion)) for f in ok}
    low = min(value.values())
    delta = {m: v - low for m, v in value.items()}
    rel = {m: math.exp(-d / 2) for m, d in delta.items()}
    total = sum(rel.values())
    best = min(ok, key=lambda f: value[f.model]).model
    chosen = min((f for f in ok if delta[f.model] <= threshold), key=lambda f: (f.k, value[f.model])).model
    return {
        "best": best,
        "chosen": chosen,
        "delta": delta,
        "weight": {m: r / total for m, r in rel.items()},
        "reason": "",
    }


def alpha_window(
    t: ArrayLike,
    y: ArrayLike,
    t_start: float,
    t_end: float,
    *,
    c: float | None = None,
    c_se: float = 0.0,
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    n_boot: int = 0,
    seed: int = 0,
) -> Fit:
    """Power-law exponent on the window ``t_start <= t <= t_end`` (binned within the window); a
    curve that ends before ``t_end`` gets none.

    ``c=None``: ``c`` free (model ``power_law``, 3 parameters). A short window (e.g. epochs
    5-15, half a decade) barely constrains the floor, and ``alpha`` and ``c`` trade off, so the
    interval is honest but wide. ``c`` given (e.g. the floor of the fit from the knee to the
    end, with its standard error ``c_se``): model ``power_law_fixed_c``, ``L = c + a (t /
    t_ref)^-alpha`` with 2 fitted parameters, and the floor's uncertainty propagated to alpha
    by the delta method::

        se(alpha)^2 = se_fit(alpha)^2 + (d alpha / d c)^2 c_se^2,   d alpha / d c = -sum_i g_i

    with ``g`` the fit's influence of each bin mean on alpha (raising the floor = lowering every
    bin; no refits: they cost the window scan two thirds of its time). ``ci`` uses that standard
    error and ``t_{0.975, n-2}``; ``params["c"]`` is the fixed floor and ``stderr["c"]`` =
    ``c_se``; ``boot_ci`` (``n_boot > 0``) holds ``c`` fixed. Never raises.
    """
    problem = curve_problem(t, y)
    model = POWER_LAW if c is None else POWER_LAW_FIXED_C
    if problem:
        return failed_fit(model, problem)
    if not t_end > t_start:
        return failed_fit(model, f"empty window [{t_start}, {t_end}]")
    t_last = float(np.max(np.asarray(t, dtype=np.float64)))
    if t_last < t_end:  # alpha over part of the window is another quantity, not comparable
        return failed_fit(model, f"the curve ends at t={t_last:g}, before the window's end (t={t_end:g})")
    return _window_fit(log_bins(t, y, bins_per_decade, min_t=t_start, max_t=t_end), c, c_se, n_boot, seed)


def _window_fit(curve: Binned, c: float | None, c_se: float, n_boot: int = 0, seed: int = 0) -> Fit:
    """:func:`alpha_window`'s fit on the window's bins."""
    if c is None:
        return _fit(POWER_LAW, curve, n_boot, seed)
    fit = _fit(POWER_LAW_FIXED_C, curve, n_boot, seed, c_fixed=c)
    if not fit.ok:
        return fit
    slope = -float(np.sum(fit.influence["alpha"]))
    se_alpha = math.hypot(fit.stderr["alpha"], slope * c_se)
    q = float(special.stdtrit(fit.n - fit.k, 0.975))
    alpha = fit.params["alpha"]
    return dataclasses.replace(
        fit,
        params={**fit.params, "c": float(c)},
        stderr={**fit.stderr, "alpha": se_alpha, "c": float(c_se)},
        ci={
            **fit.ci,
            "alpha": (alpha - q * se_alpha, alpha + q * se_alpha),
            "c": (float(c) - q * c_se, float(c) + q * c_se),
        },
    )


def window_scan(
    t: ArrayLike,
    y: ArrayLike,
    starts: Sequence[float],
    ends: Sequence[float],
    *,
    c: float | None = None,
    c_se: float = 0.0,
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
) -> dict[str, FloatArray]:
    """:func:`alpha_window` on every ``(start, end)`` pair, for a robustness heat map.

    Returns arrays of shape ``(len(starts), len(ends))``: ``alpha``, ``alpha_lo``, ``alpha_hi``
    (95% CI) and ``n_bins``; NaN (``n_bins`` 0) where ``end <= start``, the window has too few
    bins, or the fit failed.
    """
    shape = (len(starts), len(ends))
    out = {key: np.full(shape, np.nan) for key in ("alpha", "alpha_lo", "alpha_hi")}
    out["n_bins"] = np.zeros(shape)
    if curve_problem(t, y):
        return out
    # checked and sorted once; each window bins its own slice (a third of the scan's time went
    # to re-checking and re-masking the whole run per window)
    order = np.argsort(np.asarray(t, dtype=np.float64).reshape(-1), kind="stable")
    ts = np.asarray(t, dtype=np.float64).reshape(-1)[order]
    ys = np.asarray(y, dtype=np.float64).reshape(-1)[order]
    for i, s in enumerate(starts):
        for j, e in enumerate(ends):
            if e <= s or ts[-1] < e:  # empty, or the curve ends first (alpha_window's reasons)
                continue
            lo, hi = np.searchsorted(ts, s, "left"), np.searchsorted(ts, e, "right")
            fit = _window_fit(log_bins(ts[lo:hi], ys[lo:hi], bins_per_decade, min_t=s, max_t=e), c, c_se)
            if fit.ok:
                out["alpha"][i, j] = fit.params["alpha"]
                out["alpha_lo"][i, j], out["alpha_hi"][i, j] = fit.ci["alpha"]
                out["n_bins"][i, j] = fit.n
    return out
