"""Loss-curve noise and per-sample gradient noise: plain functions, no Lightning.

Loss-curve noise (on the last per-batch training losses)
-------------------------------------------------------
1. Power-law detrend: fit ``log L = a + b log t`` by least squares (``t`` = optimizer step of the
   batch, > 0) and keep the residual ``r_t = log L_t - (a + b log t)`` -- a dimensionless
   log-ratio; ``exp(r)`` is the factor by which a batch's loss sits above/below the trend.
2. ``resid_power``: variance of ``r`` (mean of ``r^2``; OLS residuals have mean 0), unit: (ln
   loss)^2, i.e. squared natural-log ratio.
3. ``psd_tail``: Welch power spectral density of ``r`` (``scipy.signal.welch``, sampling frequency
   1 per batch, so frequencies run 0 .. 0.5 cycles/batch; Hann window, ``nperseg = min(128, n)``,
   50% overlap, constant detrend per segment, one-sided "density" scaling). ``psd_tail`` is the
   power in the highest-frequency band, the top quarter of the frequency axis by default:
   ``f in [0.375, 0.5]`` cycles/batch, integrated (trapezoid) over the band; ``psd_tail_ratio`` is
   that divided by the power integrated over all frequencies ``[0, 0.5]``. White noise puts
   ~25% of its power in the top quarter; a low-pass series (slow drifts, e.g. AR(1) with
   positive coefficient) less, batch-to-batch alternation more. Band edges are returned.
Too few points (fewer than ``min_points``, default 32) or non-finite/non-positive losses give a
result with every value ``None`` and a ``reason`` string; never a silent NaN.

Gradient noise (per-sample gradients on a fixed batch)
------------------------------------------------------
Per-sample gradients ``g_n = grad l_n`` (l_n = cross-entropy of sample n in nats) over a batch of
N samples: ``grad_var`` = mean over the P parameters of the unbiased per-coordinate variance
``s_j^2 = sum_n (g_nj - gbar_j)^2 / (N - 1)``; ``tr_sigma = sum_j s_j^2`` (trace of the per-sample
gradient covariance); ``grad_mean_sq_norm = |gbar|^2``. The gradient noise scale of McCandlish et
al. (2018), ``B_simple = tr(Sigma) / |G|^2``, uses the unbiased ``|G|^2`` estimate
``|gbar|^2 - tr_sigma / N`` (``noise_scale``; ``None`` with a reason if that is <= 0, i.e. the mean
gradient is not resolved by N samples); ``noise_scale_biased = tr_sigma / |gbar|^2`` is given too.

BatchNorm and per-sample gradients: with batch statistics every sample's output depends on every
other sample, so "the gradient of sample n" is not defined (BackPACK refuses BN in train mode for
this reason). ``bn_mode="batch_stats_frozen"`` (default) computes each g_n with BN normalising by
the batch's own mean/variance held fixed (BN in eval mode with its running buffers temporarily
replaced by the batch statistics, so the forward is identical to the train-mode forward on that
batch); it drops only the gradient path through the statistics. ``bn_mode="eval"`` uses the running
statistics (a different function early in training). Running statistics are restored.

Methods: ``method="backpack"`` (BackPACK ``SumGradSquared`` on a deep copy with its converter for
residual sums: no per-sample tensor is stored) or ``"vmap"`` (``torch.func.vmap(grad)`` in chunks;
memory chunk x P). Both give the same numbers (tested).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from scipy import signal
from torch import Tensor, nn

GradBNMode = Literal["batch_stats_frozen", "eval"]
GradMethod = Literal["backpack", "vmap"]
Series: TypeAlias = Sequence[float] | np.ndarray  # numbers in order: a list or a 1-D array

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LOSS_NOISE_KEYS = (
    "resid_power",
    "psd_tail",
    "psd_tail_ratio",
    "psd_total",
    "psd_band_lo",
    "psd_band_hi",
    "psd_nperseg",
    "trend_slope",
    "trend_intercept",
)


# --------------------------------------------------------------------------------------------
# Loss-curve noise
# --------------------------------------------------------------------------------------------
def detrend_power_law(steps: Series, losses: Series) -> dict[str, Any]:
    """Least-squares fit ``log L = a + b log t``; returns residual, slope ``b``, intercept ``a``.

    Requires ``len >= 3``, all losses > 0 and finite, steps > 0, and at least two distinct steps;
    otherwise returns ``{"reason": ...}`` only.
    """
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    t = np.asarray(steps, dtype=np.float64).reshape(-1)
    if loss.shape != t.shape:
        return {"reason": f"losses ({loss.size}) and steps ({t.size}) differ in length"}
    if loss.size < 3:
        return {"reason": f"only {loss.size} losses (a power-law fit needs >= 3)"}
    if not np.all(np.isfinite(loss)):
        return {"reason": f"{int(np.sum(~np.isfinite(loss)))} non-finite losses in the window"}
    if np.any(loss <= 0):
        return {"reason": "non-positive loss in the window (log undefined)"}
    if np.any(t <= 0):
        return {"reason": "non-positive step in the window (log undefined)"}
    x, y = np.log(t), np.log(loss)
    if np.ptp(x) == 0:
        return {"reason": "all losses have the same step"}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    return {"residual": resid, "slope": float(slope), "intercept": float(intercept)}


def resid_power(residual: Series) -> float:
    """Variance of the detrended log-loss residual (mean of squares about its mean)."""
    r = np.asarray(residual, dtype=np.float64)
    return float(np.var(r))


def psd_tail(
    residual: Series,
    *,
    tail_fraction: float = 0.25,
    nperseg: int | None = None,
) -> dict[str, float]:
    """Welch PSD of ``residual`` (fs = 1/batch) and the power in its top ``tail_fraction`` band.

    Returns ``psd_tail`` (power in ``[psd_band_lo, psd_band_hi]`` cycles/batch, rectangle rule),
    ``psd_total`` (power over ``[0, 0.5]``), ``psd_tail_ratio`` = tail / total, the band edges and
    ``psd_nperseg``. For white noise of variance s^2 the total is ~s^2 and the ratio ~tail_fraction.
    """
    if not 0 < tail_fraction < 1:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    r = np.asarray(residual, dtype=np.float64)
    n = r.size
    nper = int(min(128, n) if nperseg is None else min(nperseg, n))
    freqs, pxx = signal.welch(
        r,
        fs=1.0,
        window="hann",
        nperseg=nper,
        noverlap=nper // 2,
        detrend="constant",
        scaling="density",
        return_onesided=True,
    )
    df = float(freqs[1] - freqs[0]) if freqs.size >= 2 else 1.0
    lo = 0.5 * (1.0 - tail_fraction)
    band = freqs >= lo - 1e-12
    # Rectangle rule on scipy's one-sided density: sum(Pxx) * df equals the variance (Parseval).
    total = float(pxx.sum() * df)
    tail = float(pxx[band].sum() * df)
    band_lo = float(freqs[band][0]) if band.any() else float("nan")
    return {
        "psd_tail": tail,
        "psd_total": total,
        "psd_tail_ratio": tail / total if total > 0 else float("nan"),
        "psd_band_lo": band_lo,
        "psd_band_hi": float(freqs[-1]),
        "psd_nperseg": nper,
    }


def loss_noise_metrics(
    steps: Series,
    losses: Series,
    *,
    min_points: int = 32,
    tail_fraction: float = 0.25,
) -> dict[str, Any]:
    """``resid_power``, ``psd_tail`` (+ ratio, band, total), the trend fit, ``n_losses`` and
    ``noise_reason`` (None when computed; otherwise why every value is None)."""
    n = len(losses)
    out: dict[str, Any] = {k: None for k in LOSS_NOISE_KEYS}
    out.update({"n_losses": n, "noise_reason": None})
    if n < min_points:
        out["noise_reason"] = f"only {n} losses in the buffer (need >= {min_points})"
        return out
    fit = detrend_power_law(steps, losses)
    if "reason" in fit:
        out["noise_reason"] = fit["reason"]
        return out
    resid = fit["residual"]
    spec = psd_tail(resid, tail_fraction=tail_fraction)
    values = {"resid_power": resid_power(resid), **spec}
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        out["noise_reason"] = f"non-finite {', '.join(bad)}"
        return out
    out.update(values)
    out["trend_slope"], out["trend_intercept"] = fit["slope"], fit["intercept"]
    return out


# --------------------------------------------------------------------------------------------
# Per-sample gradient noise
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen_batch_stats(model: nn.Module, x: Tensor) -> Iterator[nn.Module]:
    """BN layers in eval mode, normalising with ``x``'s batch statistics (held fixed).

    One no-grad forward in train mode (``track_running_stats=False``: nothing is updated) records
    each BN layer's input mean and biased variance; the running buffers are replaced by those for
    the duration, so an eval-mode forward on ``x`` equals the train-mode forward. Everything
    (buffers, flags, modes) is restored on exit.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    flags = [(m, m.training) for m in model.modules()]
    saved = [(bn, bn.track_running_stats, bn.running_mean, bn.running_var, bn.num_batches_tracked) for bn in bns]
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        inp = inputs[0]
        dims = [0, *range(2, inp.dim())]
        stats[mod] = (inp.mean(dims), inp.var(dims, unbiased=False))

    handles = [bn.register_forward_hook(hook) for bn in bns]
    try:
        model.train()
        for bn in bns:
            bn.track_running_stats = False
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
        handles = []
        for bn in bns:
            mean, var = stats[bn]
            bn.running_mean, bn.running_var = mean.detach().clone(), var.detach().clone()
            bn.track_running_stats = True
        model.eval()
        yield model
    finally:
        for h in handles:
            h.remove()
        for bn, track, rm, rv, nbt in saved:
            bn.track_running_stats = track
            bn.running_mean, bn.running_var, bn.num_batches_tracked = rm, rv, nbt
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _grad_bn_context(model: nn.Module, x: Tensor, bn_mode: GradBNMode) -> Iterator[nn.Module]:
    if bn_mode == "batch_stats_frozen":
        with frozen_batch_stats(model, x):
            yield model
    elif bn_mode == "eval":
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            yield model
        finally:
            for m, flag in flags:
                m.training = flag
    else:
        raise ValueError(f"bn_mode must be 'batch_stats_frozen' or 'eval', got {bn_mode!r}")


def _sums_backpack(model: nn.Module, x: Tensor, y: Tensor, criterion: nn.Module) -> tuple[Tensor, Tensor, int]:
    """(sum_n g_n, sum_n g_n^2 elementwise, P) via BackPACK SumGradSquared on a deep copy."""
    from backpack import backpack, extend
    from backpack.extensions import SumGradSquared

    from deconcnn.metrics.curvature import backpack_extend as _backpack_extend

    clone = copy.deepcopy(model)
    ext = _backpack_extend(clone)
    crit = extend(type(criterion)(reduction="sum"))
    params = [p for p in ext.parameters() if p.requires_grad]
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Encountered BatchNorm module in training mode")
        loss = crit(ext(x), y)
        with backpack(SumGradSquared()):
            loss.backward()
    # reduction="sum": .grad = sum_n g_n, .sum_grad_squared = sum_n g_n^2 (elementwise)
    grads, squares = [], []
    for p in params:
        assert p.grad is not None, "every trainable parameter takes part in the loss"
        grads.append(p.grad.reshape(-1))
        squares.append(p.sum_grad_squared.reshape(-1))  # type: ignore[attr-defined]  # BackPACK's, set by backward
    g_sum, sq_sum = torch.cat(grads), torch.cat(squares)
    return g_sum, sq_sum, g_sum.numel()


def _sums_vmap(model: nn.Module, x: Tensor, y: Tensor, criterion: nn.Module, chunk: int) -> tuple[Tensor, Tensor, int]:
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return crit(out, yi.unsqueeze(0))

    crit = type(criterion)(reduction="mean")
    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    g_sum: dict[str, Tensor] = {n: torch.zeros_like(p) for n, p in params.items()}
    sq_sum: dict[str, Tensor] = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, x.shape[0], chunk):
        gs = per_sample(params, x[start : start + chunk], y[start : start + chunk])
        for n, g in gs.items():
            g_sum[n] += g.sum(0)
            sq_sum[n] += (g * g).sum(0)
    flat_g = torch.cat([g_sum[n].reshape(-1) for n in params])
    flat_sq = torch.cat([sq_sum[n].reshape(-1) for n in params])
    return flat_g, flat_sq, flat_g.numel()


def gradient_noise(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    criterion: nn.Module | None = None,
    *,
    bn_mode: GradBNMode = "batch_stats_frozen",
    method: GradMethod = "backpack",
    vmap_chunk: int = 32,
) -> dict[str, Any]:
    """Per-sample gradient statistics of ``criterion`` on ``batch`` (see module docstring).

    ``criterion``: ``nn.CrossEntropyLoss()`` by default (its class is re-instantiated with
    ``reduction="sum"`` for BackPACK and applied to single samples for vmap; ``nn.MSELoss`` works
    too). The per-sample loss ``l_n`` is the criterion on sample n alone.

    Returns ``grad_var``, ``tr_sigma``, ``grad_mean_sq_norm``, ``noise_scale`` (B_simple, debiased
    ``|G|^2``), ``noise_scale_biased``, ``grad_noise_n``, ``grad_noise_method``,
    ``grad_noise_bn_mode``, ``grad_noise_seconds`` and ``grad_noise_reason`` (None, or why a value
    is None). Parameters, ``.grad``, BN buffers and modes of ``model`` are left untouched.
    """
    x, y = batch
    n = int(x.shape[0])
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "grad_var": None,
        "tr_sigma": None,
        "grad_mean_sq_norm": None,
        "noise_scale": None,
        "noise_scale_biased": None,
        "grad_noise_n": n,
        "grad_noise_method": method,
        "grad_noise_bn_mode": bn_mode,
        "grad_noise_reason": None,
    }
    if n < 2:
        out["grad_noise_reason"] = f"batch of {n} sample(s): a variance needs >= 2"
        return out
    with _grad_bn_context(model, x, bn_mode):
        if method == "backpack":
            g_sum, sq_sum, p = _sums_backpack(model, x, y, criterion)
        elif method == "vmap":
            g_sum, sq_sum, p = _sums_vmap(model, x, y, criterion, vmap_chunk)
        else:
            raise ValueError(f"method must be 'backpack' or 'vmap', got {method!r}")
    g_sum, sq_sum = g_sum.double(), sq_sum.double()
    gbar = g_sum / n
    var = (sq_sum - n * gbar * gbar).clamp_min(0) / (n - 1)
    tr_sigma = float(var.sum())
    g2 = float(gbar.dot(gbar))
    out.update(
        grad_var=tr_sigma / p,
        tr_sigma=tr_sigma,
        grad_mean_sq_norm=g2,
        noise_scale_biased=tr_sigma / g2 if g2 > 0 else None,
    )
    g2_unbiased = g2 - tr_sigma / n
    if g2_unbiased > 0:
        out["noise_scale"] = tr_sigma / g2_unbiased
    else:
        out["grad_noise_reason"] = (
            f"|G|^2 estimate {g2_unbiased:.3g} <= 0: the mean gradient is not resolved by {n} "
            "samples (noise_scale undefined; noise_scale_biased is a lower bound)"
        )
    if not all(math.isfinite(v) for v in (tr_sigma, g2)):
        for k in ("grad_var", "tr_sigma", "grad_mean_sq_norm", "noise_scale", "noise_scale_biased"):
            out[k] = None
        out["grad_noise_reason"] = "non-finite gradients"
    out["grad_noise_seconds"] = time.perf_counter() - t0
    return out
