"""Gradient-noise metrics, as plain functions (no Lightning).

Loss-curve noise: the last per-batch losses are detrended by a power-law fit (log loss linear in
log step), and the residual's variance and high-frequency power are reported. Gradient noise: the
per-sample gradient covariance on a fixed batch, summarised by its mean per-parameter variance,
its trace, and McCandlish et al.'s (2018) simple noise scale B_simple = tr(Sigma) / |G|^2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import welch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

MIN_LOSS_POINTS = 32
# The "tail" band is the top quarter of the Welch frequencies, [0.375, 0.5] cycles per step: batch to
# batch jitter, above any trend or epoch-scale oscillation of the 512-step window.
TAIL_BAND = (0.375, 0.5)


@dataclass
class LossNoise:
    n_losses: int
    resid_power: float | None = None
    psd_tail: float | None = None
    psd_tail_ratio: float | None = None
    detrend_slope: float | None = None
    reason: str | None = None


def detrend_power_law(steps: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, float]:
    """Residual of log(loss) after a least-squares fit linear in log(step + 1), and the slope."""
    x = np.log(np.asarray(steps, dtype=np.float64) + 1.0)
    y = np.log(np.asarray(losses, dtype=np.float64))
    slope, intercept = np.polyfit(x, y, 1)
    return y - (intercept + slope * x), float(slope)


def band_power(residual: np.ndarray, band: tuple[float, float] = TAIL_BAND) -> tuple[float, float]:
    """(power in `band`, its ratio to total power) of the residual's Welch spectrum (fs = 1/step)."""
    freqs, psd = welch(residual, fs=1.0, nperseg=min(128, len(residual)), detrend="constant")
    df = freqs[1] - freqs[0]
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    total = float(psd.sum() * df)
    tail = float(psd[in_band].sum() * df)
    return tail, (tail / total if total > 0 else 0.0)


def loss_noise(steps: np.ndarray, losses: np.ndarray, min_points: int = MIN_LOSS_POINTS) -> LossNoise:
    """resid_power, psd_tail and its ratio on a window of per-batch losses; a reason instead of NaN."""
    n = len(losses)
    if n < min_points:
        return LossNoise(n, reason=f"only {n} losses in the window (need {min_points})")
    losses = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(losses)) or np.any(losses <= 0):
        return LossNoise(n, reason="non-finite or non-positive loss in the window")
    residual, slope = detrend_power_law(steps, losses)
    tail, ratio = band_power(residual)
    return LossNoise(n, float(np.var(residual, ddof=1)), tail, ratio, slope)


@dataclass
class GradientNoise:
    n_samples: int
    grad_var: float            # per-sample gradient variance, averaged over parameters
    trace_cov: float           # tr(Sigma): summed over parameters
    mean_grad_sq_norm: float   # |G|^2, bias-corrected: |mean g|^2 - tr(Sigma) / n
    noise_scale: float | None  # B_simple = tr(Sigma) / |G|^2
    reason: str | None = None


def per_sample_gradient_noise(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                              inputs: Tensor, targets: Tensor, chunk_size: int = 32) -> GradientNoise:
    """Per-sample gradients with torch.func (vmap over grad), accumulated in chunks.

    The model is evaluated as it is (the caller picks train/eval mode). BatchNorm with batch
    statistics couples samples, so per-sample gradients are only defined with running statistics:
    call this with the model in eval mode. torch.func takes any module as it is; BackPACK's
    BatchGrad would need its graph converter for the ResNet's residual additions.
    """
    n = len(targets)
    if n < 2:
        raise ValueError("per-sample gradient variance needs at least 2 samples")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    total_sq = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    for start in range(0, n, chunk_size):
        grads = per_sample_grads(params, inputs[start:start + chunk_size], targets[start:start + chunk_size])
        for key, g in grads.items():
            g = g.double()
            total[key] += g.sum(0)
            total_sq[key] += (g * g).sum(0)
    count = sum(v.numel() for v in params.values())
    trace_cov = sum(float(((total_sq[k] - total[k] ** 2 / n) / (n - 1)).sum()) for k in params)
    mean_sq = sum(float(((total[k] / n) ** 2).sum()) for k in params) - trace_cov / n
    if mean_sq > 0:
        return GradientNoise(n, trace_cov / count, trace_cov, mean_sq, trace_cov / mean_sq)
    return GradientNoise(n, trace_cov / count, trace_cov, mean_sq, None,
                         reason="mean gradient indistinguishable from noise on this batch")
