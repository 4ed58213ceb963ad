"""Noise metrics against known answers (deconcnn.metrics.noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from models import tiny_bn_cnn
from torch import nn

from deconcnn.metrics.noise import (
    detrend_power_law,
    frozen_batch_stats,
    gradient_noise,
    loss_noise_metrics,
    psd_tail,
    resid_power,
)


def _ar1(phi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n)
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _ar1_tail_ratio_theory(phi: float, lo: float) -> float:
    """Share of an AR(1) process's power at f in [lo, 0.5]: S(f) ~ 1 / (1 + phi^2 - 2 phi cos 2 pi f)."""
    f = np.linspace(0, 0.5, 200001)
    s = 1.0 / (1 + phi**2 - 2 * phi * np.cos(2 * np.pi * f))
    return float(s[f >= lo].sum() / s.sum())


def test_detrend_recovers_a_power_law_exponent():
    steps = np.arange(1, 513)
    fit = detrend_power_law(steps, 3.0 * steps**-0.5)
    assert fit["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert fit["intercept"] == pytest.approx(math.log(3.0), abs=1e-9)
    assert np.abs(fit["residual"]).max() < 1e-9


def test_psd_tail_white_vs_low_pass_and_high_pass_ar1_orders_as_theory_says():
    n = 8192
    white = np.random.default_rng(0).standard_normal(n)
    low, high = _ar1(0.9, n, 1), _ar1(-0.9, n, 2)
    w, lp, hp = psd_tail(white), psd_tail(low), psd_tail(high)
    assert w["psd_band_lo"] == pytest.approx(0.375) and w["psd_band_hi"] == pytest.approx(0.5)
    # Flat spectrum: the top quarter of the frequencies holds ~1/4 of the power; total = variance.
    assert w["psd_tail_ratio"] == pytest.approx(0.25, abs=0.03)
    assert w["psd_total"] == pytest.approx(np.var(white), rel=0.05)
    # Low-pass AR(1) (phi=0.9) puts far less in the tail, high-pass (phi=-0.9) far more; both
    # close to the theoretical share (Welch's Hann window leaks a little power into the tail).
    assert lp["psd_tail_ratio"] < w["psd_tail_ratio"] < hp["psd_tail_ratio"]
    assert lp["psd_tail_ratio"] == pytest.approx(_ar1_tail_ratio_theory(0.9, 0.375), abs=0.01)
    assert hp["psd_tail_ratio"] == pytest.approx(_ar1_tail_ratio_theory(-0.9, 0.375), abs=0.05)


def test_loss_noise_on_a_noisy_power_law_curve():
    rng = np.random.default_rng(1)
    steps = np.arange(1000, 1512)
    losses = 2.0 * steps**-0.3 * np.exp(0.05 * rng.standard_normal(512))
    out = loss_noise_metrics(steps, losses)
    assert out["noise_reason"] is None and out["n_losses"] == 512
    # variance of the residual ~ 0.05^2 (3 std. errors of a 512-sample variance: ~19%)
    assert out["resid_power"] == pytest.approx(0.05**2, rel=0.2)
    assert out["trend_slope"] == pytest.approx(-0.3, abs=0.1)
    assert out["psd_tail_ratio"] == pytest.approx(0.25, abs=0.07)
    assert out["psd_total"] == pytest.approx(out["resid_power"], rel=0.15)  # Parseval
    assert resid_power(detrend_power_law(steps, losses)["residual"]) == out["resid_power"]


@pytest.mark.parametrize(
    ("steps", "losses", "reason"),
    [
        (np.arange(1, 11), np.ones(10), "only 10 losses"),
        (np.arange(1, 42), np.r_[np.ones(40), np.nan], "non-finite"),
        (np.arange(1, 42), np.r_[np.ones(40), 0.0], "non-positive loss"),
        (np.arange(0, 41), np.ones(41), "non-positive step"),
    ],
)
def test_too_few_or_bad_losses_give_a_reason_not_nan(steps, losses, reason):
    out = loss_noise_metrics(steps, losses)
    assert reason in out["noise_reason"]
    assert out["resid_power"] is None and out["psd_tail"] is None and out["psd_tail_ratio"] is None
    assert out["n_losses"] == len(losses)


@pytest.mark.parametrize("method", ["backpack", "vmap"])
def test_gradient_variance_of_linear_regression_matches_its_closed_form(method):
    torch.manual_seed(0)
    n, d = 50, 7
    x = torch.randn(n, d)
    y = (3.0 * x.sum(1) + 0.1 * torch.randn(n))[:, None]  # far from the initial weights
    model = nn.Linear(d, 1, bias=False)
    out = gradient_noise(model, (x, y), nn.MSELoss(), method=method, vmap_chunk=16)
    # per-sample loss (w.x - y)^2 -> gradient 2 (w.x - y) x
    w = model.weight.detach().double().numpy().ravel()
    xs, ys = x.double().numpy(), y.double().numpy().ravel()
    g = 2 * (xs @ w - ys)[:, None] * xs
    var = g.var(axis=0, ddof=1)
    g2 = float(np.sum(g.mean(axis=0) ** 2))
    g2_unbiased = g2 - var.sum() / n
    assert out["grad_noise_reason"] is None and out["grad_noise_method"] == method
    assert out["grad_var"] == pytest.approx(var.mean(), rel=1e-4)
    assert out["tr_sigma"] == pytest.approx(var.sum(), rel=1e-4)
    assert out["grad_mean_sq_norm"] == pytest.approx(g2, rel=1e-4)
    assert g2_unbiased > 0 and out["noise_scale"] == pytest.approx(var.sum() / g2_unbiased, rel=1e-4)
    assert out["noise_scale_biased"] == pytest.approx(var.sum() / g2, rel=1e-4)


def _img_batch(n=12):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_frozen_batch_stats_forward_equals_train_forward_and_restores_everything():
    model = tiny_bn_cnn()
    x, _ = _img_batch()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(0.7)
        bn.running_var.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with bn_ctx_train(model):
        ref = model(x).detach()
    with frozen_batch_stats(model, x):
        assert not bn.training
        got = model(x).detach()
    assert torch.allclose(got, ref, atol=1e-5)
    assert model.training and bn.training and bn.track_running_stats
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class bn_ctx_train:  # noqa: N801 - a train-mode forward that does not update running stats
    def __init__(self, model):
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def __enter__(self):
        for b in self.bns:
            b.track_running_stats = False

    def __exit__(self, *exc):
        for b in self.bns:
            b.track_running_stats = True


@pytest.mark.parametrize("bn_mode", ["batch_stats_frozen", "eval"])
def test_gradient_noise_backpack_equals_vmap_on_bn_net_and_leaves_model_untouched(bn_mode):
    model = tiny_bn_cnn()
    batch = _img_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    a = gradient_noise(model, batch, bn_mode=bn_mode, method="backpack")
    b = gradient_noise(model, batch, bn_mode=bn_mode, method="vmap", vmap_chunk=5)
    for key in ("grad_var", "tr_sigma", "grad_mean_sq_norm", "noise_scale_biased"):
        assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert a["grad_noise_bn_mode"] == bn_mode
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradient_noise_unresolved_mean_gradient_gives_reason():
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    y = torch.randn(6, 1) * 10  # pure noise targets around a zero-mean gradient
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    out = gradient_noise(model, (x, y), nn.MSELoss(), method="vmap")
    if out["noise_scale"] is None:
        assert "not resolved" in out["grad_noise_reason"]
    assert out["grad_var"] is not None and math.isfinite(out["grad_var"])
    one = gradient_noise(model, (x[:1], y[:1]), nn.MSELoss(), method="vmap")
    assert one["grad_var"] is None and "needs >= 2" in one["grad_noise_reason"]


def test_gradient_noise_backpack_equals_vmap_on_the_bn_resnet():
    from deconcnn.training.resnet import CifarResNet18

    torch.manual_seed(0)
    model = CifarResNet18(width=0.125)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
    a = gradient_noise(model, batch, method="backpack")
    b = gradient_noise(model, batch, method="vmap")
    for key in ("grad_var", "tr_sigma", "grad_mean_sq_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
