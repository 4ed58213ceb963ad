"""Does lambda_max settle on a plateau, and when? Model selection on its log, with an interval.

lambda_max (top Hessian eigenvalue) is measured every few hundred steps (~35 points per run) with
5-10% scatter between measurements. A rule of the kind "first point from which every later point
stays within a band of its own later median" is driven by the noise (one late outlier moves it by
tens of epochs) and calls any slow drift a plateau. So the series is *described* instead, by the
model that fits it best, on ``y = ln lambda_max`` (the noise is multiplicative; on the log scale a
factor 1/lr is an additive offset), ``x`` = step:

========================  ===============================================================  ===
model                     ``y(x)``                                                         k
========================  ===============================================================  ===
``flat``                  ``b``                                                            2
``tracks_lr``             ``b - ln lr(x)``                                                 2
``trend``                 ``b + s x``                                                      3
``plateau``               ``b + s min(x - x_p, 0)``: a linear rise (or fall), then flat    4
``tracks_lr_from``        ``b + s min(x - x_s, 0) + ln lr(x_s) - ln lr(max(x, x_s))``:     4
                          a rise, then ``lambda_max`` proportional to 1/lr from ``x_s`` on
========================  ===============================================================  ===

``k`` counts the noise variance. Least squares, AICc = ``n ln(RSS/n) + 2k + 2k(k+1)/(n-k-1)``;
the chosen model is the one with the fewest parameters among those within 2 AICc units of the
lowest (the rule of ``fits.select_model``), ties broken by lower AICc. The breakpoints ``x_p`` /
``x_s`` are profiled over a grid of ``GRID`` positions from the first record to the
``MIN_TAIL``-th from the end (a flat part needs at least that many records); the estimate is the
middle of the positions that share the lowest RSS (the breakpoint is not identified between two
records that bracket it alone). The 95% interval is the profile-likelihood set
``{x_p : (RSS(x_p) - RSS_min) / (RSS_min / (n - 3)) <= F(0.95; 1, n - 3)}`` (its hull).

The shape reported (``SHAPES``): ``plateau`` (with its step and interval), ``flat from the first
record`` (plateau at or before the first record: step = first record, interval from step 0),
``rising`` / ``falling`` (no plateau), or ``tracks 2/lr (edge of stability)`` (either lr model:
lambda_max grows as the cosine schedule lowers lr; the constant ``lambda_max * lr`` is reported,
~2 for gradient descent at the edge of stability, ~2(1 + momentum) with heavy-ball momentum).
The lr models take part only when the logged lr is given and positive at every record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from deconcnn.analysis.curves import FloatArray

SHAPE_PLATEAU = "plateau"
SHAPE_FLAT = "flat from the first record"
SHAPE_RISING = "rising (no plateau)"
SHAPE_FALLING = "falling (no plateau)"
SHAPE_TRACKS_LR = "tracks 2/lr (edge of stability)"
SHAPES = (SHAPE_PLATEAU, SHAPE_FLAT, SHAPE_RISING, SHAPE_FALLING, SHAPE_TRACKS_LR)
#: Shapes that give a plateau step.
PLATEAU_SHAPES = (SHAPE_PLATEAU, SHAPE_FLAT)

MIN_POINTS = 8
MIN_TAIL = 3
GRID = 400
CONF = 0.95
AICC_THRESHOLD = 2.0
#: Parameters (variance included) of each model; the order breaks no ties (AICc does).
MODEL_K = {"flat": 2, "tracks_lr": 2, "trend": 3, "plateau": 4, "tracks_lr_from": 4, "still_drifting": 5}

PLATEAU_COLUMNS: tuple[str, ...] = (
    "lambda_max_n",
    "lambda_max_shape",
    "lambda_max_plateau_step",
    "lambda_max_plateau_step_lo",
    "lambda_max_plateau_step_hi",
    "lambda_max_plateau_epoch",
    "lambda_max_plateau_epoch_lo",
    "lambda_max_plateau_epoch_hi",
    "lambda_max_plateau_value",
    "lambda_max_lr_product",
    "lambda_max_plateau_reason",
)


@dataclass(frozen=True)
class Plateau:
    """The detector's answer; steps are the records' own ``step`` values."""

    n: int
    shape: str  # one of SHAPES, "" when the series could not be described
    step: float | None = None
    lo: float | None = None
    hi: float | None = None
    value: float | None = None  # the plateau's level (geometric: exp(b))
    lr_product: float | None = None  # median lambda_max * lr over the plateau / tracking part
    aicc: dict[str, float] | None = None
    reason: str = ""


def _aicc(rss: FloatArray | float, n: int, k: int) -> FloatArray:
    return np.asarray(n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1), dtype=np.float64)


def _profile(
    x: FloatArray, y: FloatArray, grid: FloatArray, terms: str, w: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """RSS and intercept at every breakpoint ``g`` of ``y = b + ...`` with ``u = x - g`` and the
    ``terms`` ``"r"`` (``min(u, 0)``), ``"q"`` (``min(u, 0)^2``), ``"t"`` (``max(u, 0)``);
    ``y`` of shape (n,) or (G, n), row weights ``w``. Batched normal equations (a tiny ridge keeps a breakpoint
    beyond every record, where a column is all zero, solvable)."""
    u = x[None, :] - grid[:, None]
    neg = np.minimum(u, 0.0)
    cols = {"r": neg, "q": neg * neg, "t": np.maximum(u, 0.0)}
    design = np.stack([np.ones_like(u), *(cols[c] for c in terms)], axis=-1)  # (G, n, p)
    yy = np.broadcast_to(y, u.shape)
    if w is not None:
        design, yy = design * w[None, :, None], yy * w[None, :]
    gram = design.transpose(0, 2, 1) @ design + 1e-12 * np.eye(design.shape[-1])
    beta = np.linalg.solve(gram, (design.transpose(0, 2, 1) @ yy[..., None]))[..., 0]
    rss = ((yy - (design @ beta[..., None])[..., 0]) ** 2).sum(1)
    return rss, beta


def _interval(grid: FloatArray, rss: FloatArray, n: int, k: int, conf: float) -> tuple[float, float, float]:
    """Estimate (middle of the lowest-RSS positions) and the profile-likelihood interval's hull."""
    best = float(rss.min())
    tied = grid[rss <= best * (1 + 1e-9) + 1e-300]
    f = float(sps.f.ppf(conf, 1, n - k + 1))
    inside = grid[(rss - best) / (best / (n - k + 1)) <= f]
    return float((tied.min() + tied.max()) / 2), float(inside.min()), float(inside.max())


def detect_plateau(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    lr_steps: ArrayLike | None = None,
    lr: ArrayLike | None = None,
    conf: float = CONF,
    grid_size: int = GRID,
) -> Plateau:
    """Describe a lambda_max series (module docstring); never raises.

    ``lr_steps``/``lr``: the logged learning rate (e.g. every training step), interpolated at the
    records and breakpoints; without it the lr models take no part. Non-finite and non-positive
    values are dropped (the reason counts them when nothing is left to describe).
    """
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != v.shape:
        return Plateau(0, "", reason=f"steps ({s.size}) and values ({v.size}) differ in length")
    keep = np.isfinite(s) & np.isfinite(v) & (v > 0)
    dropped = int(s.size - keep.sum())
    order = np.argsort(s[keep], kind="stable")
    x, y = s[keep][order], np.log(v[keep][order])
    n = int(x.size)
    if n < MIN_POINTS:
        extra = f" ({dropped} non-finite or non-positive dropped)" if dropped else ""
        return Plateau(n, "", reason=f"{n} usable points (< {MIN_POINTS}){extra}")
    span = float(x[-1] - x[0]) or 1.0
    xs = (x - x[0]) / span  # conditioning: the sums below mix x^2 and y
    grid = np.linspace(0.0, float(xs[-MIN_TAIL]), grid_size)
    floor = n * 1e-12  # an exact fit (noise-free input) must not give ln 0
    rss: dict[str, float] = {"flat": float(((y - y.mean()) ** 2).sum())}
    slope, intercept = np.polyfit(xs, y, 1)
    rss["trend"] = float(((y - intercept - slope * xs) ** 2).sum())
    # the rise may be linear in ln lambda_max or in lambda_max (relative errors: weights 1/v)
    log_rss, log_beta = _profile(xs, y, grid, "r")
    v_sorted = np.exp(y)
    lin_rss, lin_beta = _profile(xs, v_sorted, grid, "r", w=1 / v_sorted)
    p_rss = np.minimum(log_rss, lin_rss)
    rss["plateau"] = float(p_rss.min())
    b_rss, b_beta = _profile(xs, y, grid, "rt")
    rss["still_drifting"] = float(b_rss.min())
    ell = _minus_ln_lr(x, span, lr_steps, lr)
    t_rss = p_rss  # replaced below when the lr models take part
    if ell is not None:
        z = y - ell
        rss["tracks_lr"] = float(((z - z.mean()) ** 2).sum())
        ell_grid = np.interp(grid, xs, ell)
        offset = np.interp(np.maximum(xs[None, :], grid[:, None]), xs, ell) - ell_grid[:, None]
        t_rss, _ = _profile(xs, y[None, :] - offset, grid, "r")
        rss["tracks_lr_from"] = float(t_rss.min())
    aicc = {m: float(_aicc(max(r, floor), n, MODEL_K[m])) for m, r in rss.items()}
    low = min(aicc.values())
    chosen = min((m for m in aicc if aicc[m] <= low + AICC_THRESHOLD), key=lambda m: (MODEL_K[m], aicc[m]))

    def to_step(g: float) -> float:
        return float(x[0] + g * span)

    lr_at = np.exp(-ell) if ell is not None else None
    if chosen == "flat":
        prod = float(np.median(np.exp(y) * lr_at)) if lr_at is not None else None
        return Plateau(n, SHAPE_FLAT, float(x[0]), 0.0, float(x[0]), float(np.exp(y.mean())), prod, aicc)
    if chosen in ("trend", "still_drifting"):
        drift = slope if chosen == "trend" else b_beta[int(np.argmin(b_rss)), -1]
        shape = SHAPE_RISING if drift > 0 else SHAPE_FALLING
        where = "throughout" if chosen == "trend" else f"after a bend at step {to_step(grid[np.argmin(b_rss)]):.0f}"
        return Plateau(n, shape, aicc=aicc, reason=f"{shape}: ln lambda_max still drifts {where}")
    if chosen in ("tracks_lr", "tracks_lr_from"):
        assert lr_at is not None
        start = 0.0
        if chosen == "tracks_lr_from":
            start = _interval(grid, t_rss, n, MODEL_K[chosen], conf)[0]
        part = xs >= start
        prod = float(np.median(np.exp(y[part]) * lr_at[part]))
        return Plateau(
            n,
            SHAPE_TRACKS_LR,
            lr_product=prod,
            aicc=aicc,
            reason=f"{SHAPE_TRACKS_LR} from step {to_step(start):.0f}: lambda_max * lr = {prod:.3g}",
        )
    est, lo, hi = _interval(grid, p_rss, n, MODEL_K["plateau"], conf)
    i = int(np.argmin(np.abs(grid - est)))
    level = float(np.exp(log_beta[i, 0]) if log_rss[i] <= lin_rss[i] else lin_beta[i, 0])
    part = xs >= est
    prod = float(np.median(np.exp(y[part]) * lr_at[part])) if lr_at is not None else None
    return Plateau(n, SHAPE_PLATEAU, to_step(est), to_step(lo), to_step(hi), level, prod, aicc)


def _minus_ln_lr(x: FloatArray, span: float, lr_steps: ArrayLike | None, lr: ArrayLike | None) -> FloatArray | None:
    """``-ln lr`` at the records ``x``, or None without a positive lr logged across all of them."""
    if lr is None or lr_steps is None:
        return None
    ls = np.asarray(lr_steps, dtype=np.float64).reshape(-1)
    lv = np.asarray(lr, dtype=np.float64).reshape(-1)
    if ls.shape != lv.shape:
        return None
    ok = np.isfinite(ls) & np.isfinite(lv) & (lv > 0)
    if not ok.any():
        return None
    o = np.argsort(ls[ok], kind="stable")
    ls, lv = ls[ok][o], np.log(lv[ok][o])
    if ls[0] > x[0] or ls[-1] < x[-1]:
        return None
    return -np.interp(x, ls, lv)


def plateau_row(
    steps: ArrayLike | None,
    values: ArrayLike | None,
    steps_per_epoch: float,
    *,
    lr_steps: ArrayLike | None = None,
    lr: ArrayLike | None = None,
) -> dict[str, Any]:
    """:func:`detect_plateau` as the ``PLATEAU_COLUMNS`` of a run row (NaN / "" where absent)."""
    row: dict[str, Any] = dict.fromkeys(PLATEAU_COLUMNS, math.nan)
    row |= {"lambda_max_n": 0, "lambda_max_shape": ""}
    if steps is None or values is None:
        return row | {"lambda_max_plateau_reason": "no lambda_max given"}
    p = detect_plateau(steps, values, lr_steps=lr_steps, lr=lr)
    per_epoch = steps_per_epoch if steps_per_epoch > 0 else math.nan
    row |= {"lambda_max_n": p.n, "lambda_max_shape": p.shape, "lambda_max_plateau_reason": p.reason}
    for key, step in (("", p.step), ("_lo", p.lo), ("_hi", p.hi)):
        if step is not None:
            row[f"lambda_max_plateau_step{key}"] = step
            row[f"lambda_max_plateau_epoch{key}"] = step / per_epoch
    if p.value is not None:
        row["lambda_max_plateau_value"] = p.value
    if p.lr_product is not None:
        row["lambda_max_lr_product"] = p.lr_product
    return row
