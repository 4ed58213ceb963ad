import math

import torch
from torch import nn

from deconcnn.metrics.norms import global_grad_norm, global_param_norm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_param_norm_matches_concatenation():
    m = _model()
    flat = torch.cat([p.detach().flatten() for p in m.parameters()])
    got = global_param_norm(m.parameters())
    assert got.dim() == 0
    assert math.isclose(got.item(), flat.norm().item(), rel_tol=1e-6)


def test_grad_norm_matches_concatenation_and_skips_none():
    m = _model()
    m(torch.randn(5, 4)).pow(2).sum().backward()
    m[2].bias.grad = None  # a parameter without gradient is skipped, not an error
    grads = [p.grad.flatten() for p in m.parameters() if p.grad is not None]
    expected = torch.cat(grads).norm().item()
    got = global_grad_norm(m.parameters())
    assert got.dim() == 0
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_grad_norm_no_grads_is_zero():
    m = _model()
    assert global_grad_norm(m.parameters()).item() == 0.0


def test_norms_stay_on_device_and_have_no_grad():
    m = _model()
    m(torch.randn(5, 4)).sum().backward()
    g = global_grad_norm(m.parameters())
    w = global_param_norm(m.parameters())
    assert not g.requires_grad and not w.requires_grad
    assert g.device == next(m.parameters()).device
