"""Noise metrics against known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deconcnn.metrics.noise import band_power, detrend_power_law, loss_noise, per_sample_gradient_noise


def test_detrend_recovers_a_power_law_exponent():
    steps = np.arange(512)
    residual, slope = detrend_power_law(steps, 3.0 * (steps + 1.0) ** -0.5)
    assert slope == pytest.approx(-0.5, abs=1e-9) and np.abs(residual).max() < 1e-9


def test_psd_tail_of_white_noise_exceeds_that_of_a_low_pass_ar1_series():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(4096)
    ar1 = np.zeros(4096)
    for t in range(1, 4096):
        ar1[t] = 0.9 * ar1[t - 1] + rng.standard_normal()
    white_tail, white_ratio = band_power(white)
    ar1_tail, ar1_ratio = band_power(ar1)
    # White noise: flat spectrum, so the top quarter of frequencies holds ~1/4 of the power.
    assert white_ratio == pytest.approx(0.25, abs=0.05)
    # AR(1) with phi = 0.9 is low-pass: S(f) ~ 1 / (1 + phi^2 - 2 phi cos 2 pi f) -> tiny tail share.
    assert ar1_ratio < 0.05 and ar1_ratio < white_ratio / 5


def test_loss_noise_on_a_noisy_power_law_curve():
    rng = np.random.default_rng(1)
    steps = np.arange(1000, 1512)
    losses = 2.0 * (steps + 1.0) ** -0.3 * np.exp(0.05 * rng.standard_normal(512))
    result = loss_noise(steps, losses)
    assert result.reason is None and result.n_losses == 512
    assert result.resid_power == pytest.approx(0.05**2, rel=0.2)  # 3 std. errors of a 512-sample variance
    assert result.detrend_slope == pytest.approx(-0.3, abs=0.1)
    assert result.psd_tail_ratio == pytest.approx(0.25, abs=0.07)


@pytest.mark.parametrize(("losses", "reason"), [(np.ones(10), "only 10 losses"),
                                                 (np.r_[np.ones(40), np.nan], "non-finite")])
def test_too_few_or_bad_losses_give_a_reason_not_nan(losses, reason):
    result = loss_noise(np.arange(len(losses)), losses)
    assert reason in result.reason and result.resid_power is None and result.psd_tail is None


def test_gradient_variance_of_linear_regression_matches_its_closed_form():
    torch.manual_seed(0)
    n, d = 50, 7
    x = torch.randn(n, d, dtype=torch.float64)
    y = 3.0 * x.sum(1) + 0.1 * torch.randn(n, dtype=torch.float64)  # far from the initial weights
    model = nn.Linear(d, 1, bias=False).double()

    def loss_fn(out, target):
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    result = per_sample_gradient_noise(model, loss_fn, x, y, chunk_size=16)
    w = model.weight.detach().numpy().ravel()
    xs, ys = x.numpy(), y.numpy()
    g = (xs @ w - ys)[:, None] * xs  # per-sample gradient of 0.5 (w.x - y)^2
    var = g.var(axis=0, ddof=1)
    mean_sq = float(np.sum(g.mean(axis=0) ** 2)) - var.sum() / n
    assert result.grad_var == pytest.approx(var.mean(), rel=1e-9)
    assert result.trace_cov == pytest.approx(var.sum(), rel=1e-9)
    assert result.mean_grad_sq_norm == pytest.approx(mean_sq, rel=1e-9)
    assert mean_sq > 0 and result.noise_scale == pytest.approx(var.sum() / mean_sq, rel=1e-9)
