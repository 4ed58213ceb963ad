"""Known-answer tests for deconcnn.metrics.curvature (exact Hessians of tiny models)."""

from __future__ import annotations

import math

import pytest
import torch
from hessian_eigenthings import CurvatureOperator, lanczos
from models import tiny_bn_cnn
from torch import nn
from torch.func import functional_call

from deconcnn.metrics.curvature import (
    CURVATURE_DEFAULTS,
    SharedGraphHessian,
    bn_mode_context,
    cross_entropy_loss_fn,
    curvature_estimates,
    ggn_trace,
    hutchinson_trace,
    lanczos_top_eig,
    plan_trace_probes,
    trace_interval,
)
from deconcnn.training.resnet import CifarResNet18


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def _mlp_batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(32, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (32,), generator=g)


def _img_batch(n=16, classes=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _flat_fn(model, x, y):
    names = [n for n, p in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat0 = torch.cat([p.reshape(-1) for p in params])

    def f(flat):
        pieces = torch.split(flat, sizes)
        pd = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return nn.functional.cross_entropy(functional_call(model, pd, (x,)), y)

    return f, flat0


def exact_hessian(model, x, y, mode="train"):
    with bn_mode_context(model, mode):
        f, flat0 = _flat_fn(model, x, y)
        return torch.autograd.functional.hessian(f, flat0, vectorize=True)


@pytest.mark.parametrize("which", ["mlp", "bn_cnn_train", "bn_cnn_eval"])
def test_lambda_max_matches_exact_top_eigenvalue(which):
    if which == "mlp":
        model, batch, mode = _mlp(), _mlp_batch(), "train"
    else:
        model, batch, mode = tiny_bn_cnn().double(), _img_batch(), which.rsplit("_", 1)[1]
    h = exact_hessian(model, *batch, mode=mode)
    exact_top = torch.linalg.eigvalsh(h).max().item()
    res = curvature_estimates(model, batch, bn_mode=mode, eig_tol=1e-5, eig_max_iter=80, seed=0)
    assert res.bn_mode == mode and res.record()["bn_mode"] == mode
    assert abs(res.eig.eigenvalue - exact_top) <= 1e-3 * abs(exact_top)
    assert res.eig.converged and res.eig.rel_residual <= 1e-5
    # the reported residual is the true residual ||H v - lambda v||
    v = res.eig.eigenvector
    true_res = (h @ v - res.eig.eigenvalue * v).norm().item()
    assert true_res == pytest.approx(res.eig.residual, rel=0.5, abs=1e-9 * abs(exact_top))


@pytest.mark.parametrize("method", ["deflated", "hutchinson"])
def test_trace_within_three_stderr_of_exact(method):
    model, batch = tiny_bn_cnn().double(), _img_batch()
    h = exact_hessian(model, *batch, mode="train")
    exact = torch.trace(h).item()
    # loose eigen tolerance so the Krylov basis does not span the whole (small) space
    res = curvature_estimates(
        model,
        batch,
        eig_tol=5e-2,
        trace_method=method,
        trace_rel_tol=0.02,
        trace_min_probes=10,
        trace_max_probes=200,
        seed=0,
    )
    tr = res.trace
    assert tr.stderr > 0 and math.isfinite(tr.stderr)
    assert abs(tr.estimate - exact) <= 3 * tr.stderr
    assert tr.lo < exact < tr.hi and tr.lo < tr.estimate < tr.hi
    # one pilot probe chose the count; plain Hutchinson's pilot is Lanczos' cold start: free
    assert tr.n_pilot == 1
    assert tr.n_hvp == tr.n_probes + tr.n_pilot - (method == "hutchinson")
    rec = res.record()
    assert rec["curv_n_hvp"] == rec["lambda_max_n_hvp"] + rec["hessian_trace_n_hvp"]


def test_trace_many_seeds_coverage():
    """Over 20 seeds the +-3 stderr interval covers the exact trace nearly always."""
    model, batch = _mlp(), _mlp_batch()
    loss_fn = cross_entropy_loss_fn()
    exact = torch.trace(exact_hessian(model, *batch)).item()
    hits = 0
    with SharedGraphHessian(model, batch, loss_fn) as op:
        for seed in range(20):
            tr = hutchinson_trace(op, rel_tol=0.0, min_probes=30, max_probes=30, seed=seed)
            hits += abs(tr.estimate - exact) <= 3 * tr.stderr
    assert hits >= 18


@pytest.mark.parametrize("deflate", [False, True])
def test_trace_stderr_is_the_rademacher_variance_bound(deflate):
    """stderr^2 * probes estimates 2 ||B||_F^2 (B = P H P), which bounds the exact probe variance
    2 (||B||_F^2 - sum B_ii^2); a single probe already carries it."""
    model, batch = tiny_bn_cnn().double(), _img_batch()
    h = exact_hessian(model, *batch)
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        basis, exact_part = [], 0.0
        if deflate:
            eig = lanczos_top_eig(op, tol=0.0, max_iter=4)
            basis, exact_part = eig.basis, sum(eig.alphas)
        q = torch.stack(basis) if basis else torch.zeros(0, op.size, dtype=h.dtype)
        proj = torch.eye(op.size, dtype=h.dtype) - q.T @ q
        b = proj @ h @ proj
        bound = 2 * (b * b).sum().item()
        exact_var = bound - 2 * (torch.diagonal(b) ** 2).sum().item()
        many = hutchinson_trace(
            op, basis=basis, exact_part=exact_part, rel_tol=0.0, min_probes=60, max_probes=60, seed=1
        )
        one = hutchinson_trace(op, basis=basis, exact_part=exact_part, rel_tol=10.0, min_probes=1, max_probes=8, seed=1)
    assert many.stderr**2 * many.n_probes == pytest.approx(bound, rel=0.15)
    assert many.stderr**2 * many.n_probes >= 0.85 * exact_var
    assert abs(many.estimate - torch.trace(h).item()) <= 3 * many.stderr
    assert one.n_probes == 1 and one.converged
    assert math.isfinite(one.stderr) and one.stderr > 0


def test_cold_lanczos_start_is_a_rademacher_probe_reused_by_the_trace():
    model, batch = tiny_bn_cnn().double(), _img_batch()
    h = exact_hessian(model, *batch)
    with bn_mode_context(model, "train"), SharedGraphHessian(model, batch, cross_entropy_loss_fn()) as op:
        eig = lanczos_top_eig(op, tol=0.5, max_iter=3, seed=4)
        g = eig.basis[0] * math.sqrt(op.size)
        assert torch.allclose(g.abs(), torch.ones_like(g))
        assert eig.start_probe == pytest.approx(((g @ h @ g).item(), (h @ g).square().sum().item()), rel=1e-9)
        spent = op.n_matvec
        # two-stage rule: the free start probe is the pilot that sets the count (not in the
        # estimate); a loose tolerance then asks for one fresh probe
        tr = hutchinson_trace(op, rel_tol=100.0, min_probes=1, max_probes=4, start_probe=eig.start_probe)
        assert (tr.n_pilot, tr.n_probes, tr.n_hvp, op.n_matvec) == (1, 1, 1, spent + 1)
        assert tr.estimate != eig.start_probe[0]
        # a count planned from the previous record, or fixed in advance: it is the first sample
        for kw in ({"rel_var_prior": 1e-6, "min_probes": 1, "max_probes": 4}, {"min_probes": 1, "max_probes": 1}):
            spent = op.n_matvec
            tr = hutchinson_trace(op, rel_tol=100.0, start_probe=eig.start_probe, **kw)
            assert (tr.n_pilot, tr.n_probes, tr.n_hvp, op.n_matvec) == (0, 1, 0, spent)
            assert tr.estimate == eig.start_probe[0]
        assert lanczos_top_eig(op, v0=g, tol=0.5, max_iter=3).start_probe is None  # warm: not a probe
        with pytest.raises(ValueError, match="start_probe"):
            hutchinson_trace(op, basis=eig.basis, start_probe=eig.start_probe)


def test_deflated_trace_exact_when_basis_spans_space():
    model, batch = _mlp(), _mlp_batch()
    h = exact_hessian(model, *batch)
    op = SharedGraphHessian(model, batch, cross_entropy_loss_fn())
    n = op.size
    eig = lanczos_top_eig(op, tol=-1.0, max_iter=n)  # never "converged": run to invariance
    # the Krylov space becomes invariant (rank(H) + 1 <= n vectors): the rest of tr(H) is ~0
    assert len(eig.basis) <= n
    tr = hutchinson_trace(op, basis=eig.basis, exact_part=sum(eig.alphas), min_probes=2, max_probes=2)
    assert tr.estimate == pytest.approx(torch.trace(h).item(), rel=1e-6)


def test_matches_hessian_eigenthings_lanczos():
    model, batch = tiny_bn_cnn().double(), _img_batch()
    loss_fn = cross_entropy_loss_fn()
    with bn_mode_context(model, "train"):
        op = SharedGraphHessian(model, batch, loss_fn)
        ref = lanczos(op, k=1, max_iter=60, which="LA", seed=0).eigenvalues[0].item()
    a = curvature_estimates(model, batch, eig_tol=1e-6, eig_max_iter=60)
    assert a.eig.eigenvalue == pytest.approx(ref, rel=1e-6)
    assert a.n_hvp == a.eig.n_hvp + a.trace.n_hvp


def test_warm_start_converges_in_fewer_products():
    model, batch = tiny_bn_cnn().double(), _img_batch()
    cold = curvature_estimates(model, batch, eig_tol=1e-4, eig_max_iter=80)
    with torch.no_grad():  # a small step: the top eigenvector moves a little
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    warm = curvature_estimates(model, batch, eig_tol=1e-4, eig_max_iter=80, v0=cold.eig.eigenvector)
    fresh = curvature_estimates(model, batch, eig_tol=1e-4, eig_max_iter=80)
    assert warm.eig.warm_start and not fresh.eig.warm_start
    assert warm.eig.converged and fresh.eig.converged
    assert warm.eig.n_hvp < fresh.eig.n_hvp
    assert warm.eig.eigenvalue == pytest.approx(fresh.eig.eigenvalue, rel=2e-4)


def test_bad_warm_start_falls_back_to_random():
    model, batch = _mlp(), _mlp_batch()
    res = curvature_estimates(model, batch, v0=torch.zeros(3))
    assert not res.eig.warm_start and math.isfinite(res.eig.eigenvalue)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bn_running_stats_flags_grads_and_rng_untouched(mode):
    model = tiny_bn_cnn().double()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    bn.num_batches_tracked.fill_(7)
    bn.momentum = 0.25
    model.train()
    model[0].eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    res = curvature_estimates(model, _img_batch(), bn_mode=mode)
    assert res.record()["bn_mode"] == mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == flags
    assert bn.track_running_stats is True and bn.momentum == 0.25
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_bn_modes_differ_and_train_mode_uses_batch_stats():
    model, batch = tiny_bn_cnn().double(), _img_batch()
    with torch.no_grad():
        model[1].running_var.fill_(50.0)  # stale running statistics
    tr = curvature_estimates(model, batch, bn_mode="train", eig_tol=1e-4)
    ev = curvature_estimates(model, batch, bn_mode="eval", eig_tol=1e-4)
    assert abs(tr.eig.eigenvalue - ev.eig.eigenvalue) > 1e-2 * abs(tr.eig.eigenvalue)


def test_bn_mode_rejects_unknown():
    with pytest.raises(ValueError), bn_mode_context(_mlp(), "frozen"):  # type: ignore[arg-type]
        pass


def _exact_ggn_trace(model, x, y):
    _f, flat0 = _flat_fn(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def out(flat):
        pd = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return functional_call(model, pd, (x,))

    logits = out(flat0).detach()
    jac = torch.autograd.functional.jacobian(out, flat0)  # (N, C, P)
    p = logits.softmax(-1)
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        h = torch.diag(p[i]) - torch.outer(p[i], p[i])
        total += torch.einsum("cd,cp,dp->", h, jac[i], jac[i]).item()
    return total / n


def test_ggn_trace_matches_exact_ggn_on_bn_free_resnet():
    torch.manual_seed(0)
    model = CifarResNet18(width=0.125, norm="none")  # float32: BackPACK's conv code assumes it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    exact = _exact_ggn_trace(model, x, y)
    got = ggn_trace(model, (x, y), bn_mode="train")
    assert got["ggn_trace"] == pytest.approx(exact, rel=1e-4)
    assert got["ggn_trace_stderr"] == 0.0
    assert all(p.grad is None for p in model.parameters())  # worked on a copy


def test_ggn_trace_refuses_bn_in_train_mode():
    with pytest.raises(ValueError, match="BatchNorm"):
        ggn_trace(tiny_bn_cnn().double(), _img_batch(), bn_mode="train")


class _TinyReluResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.relu(self.stem(x))
        h = self.relu(self.conv(h) + h)
        return self.fc(self.pool(h).flatten(1))


def test_hessian_trace_equals_ggn_trace_for_bn_free_relu_net():
    """Piecewise-linear nets are linear in each single weight, so diag(H) = diag(GGN) exactly:
    on the BN-free ReLU ResNet the (exact) GGN trace is the Hessian trace."""
    torch.manual_seed(0)
    model = _TinyReluResNet().double()
    x, y = _img_batch(n=8)
    exact_h = torch.trace(exact_hessian(model, x, y)).item()
    assert exact_h == pytest.approx(_exact_ggn_trace(model, x, y), rel=1e-9)
    got = ggn_trace(model.float(), (x.float(), y), bn_mode="train")["ggn_trace"]
    assert got == pytest.approx(exact_h, rel=1e-4)


def test_batched_probes_match_sequential_probes():
    model, batch = tiny_bn_cnn().double(), _img_batch()
    with bn_mode_context(model, "train"):
        op = SharedGraphHessian(model, batch, cross_entropy_loss_fn())
        vs = torch.randn(3, op.size, dtype=torch.float64)
        assert torch.allclose(op.matmat(vs), torch.stack([op.matvec(v) for v in vs]), atol=1e-10)
        a = hutchinson_trace(op, rel_tol=0.0, min_probes=6, max_probes=6, seed=3)
        b = hutchinson_trace(op, rel_tol=0.0, min_probes=6, max_probes=6, seed=3, probe_batch=4)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-10)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-8)
    assert b.n_hvp == 6


def test_auto_trace_uses_exact_ggn_only_where_it_equals_the_hessian_trace():
    from deconcnn.metrics.curvature import piecewise_linear_in_each_weight

    torch.manual_seed(0)
    relu_net = _TinyReluResNet()
    x, y = _img_batch(n=8)
    x = x.float()
    assert piecewise_linear_in_each_weight(relu_net)
    assert not piecewise_linear_in_each_weight(tiny_bn_cnn().double(), "train")
    assert piecewise_linear_in_each_weight(tiny_bn_cnn().double(), "eval")
    assert not piecewise_linear_in_each_weight(_mlp())  # tanh
    res = curvature_estimates(relu_net, (x, y), trace_method="auto")
    rec = res.record()
    assert rec["hessian_trace_method"] == "ggn_exact" and rec["trace_se"] == 0.0
    assert rec["trace_lo"] == rec["trace_hi"] == rec["hessian_trace"]
    assert rec["hessian_trace_n_hvp"] == 0
    exact = torch.trace(exact_hessian(relu_net.double(), x.double(), y)).item()
    assert rec["hessian_trace"] == pytest.approx(exact, rel=1e-4)
    bn = curvature_estimates(tiny_bn_cnn().double(), _img_batch(), trace_method="auto").record()
    assert bn["hessian_trace_method"] == "deflated"
    with pytest.raises(ValueError, match="linear in each"):
        curvature_estimates(tiny_bn_cnn().double(), _img_batch(), trace_method="ggn_exact")


class _Dense(CurvatureOperator):
    """An explicit symmetric matrix as a curvature operator (counts products)."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.n_matvec = a, 0

    @property
    def size(self) -> int:
        return self.a.shape[0]

    @property
    def device(self) -> torch.device:
        return self.a.device

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_matvec += 1
        return self.a @ v


def _probe_stream(n: int, seed: int, count: int) -> torch.Tensor:
    """The Rademacher probes hutchinson_trace draws for ``seed``, in order."""
    gen = torch.Generator().manual_seed(seed + 7919)
    return torch.stack(
        [torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).double() * 2 - 1 for _ in range(count)]
    )


def test_probe_count_is_planned_from_probes_outside_the_estimate():
    g = torch.Generator().manual_seed(0)
    m0 = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = (m0 + m0.T) / 2 + 2.0 * torch.eye(40, dtype=torch.float64)  # trace ~80, one probe's SE ~ 40
    op = _Dense(a)
    tr = hutchinson_trace(op, rel_tol=0.15, min_probes=1, max_probes=64, seed=5)
    probes = _probe_stream(40, 5, 1 + tr.n_probes)
    vals = [(p @ a @ p).item() for p in probes]
    sq = [(a @ p).square().sum().item() for p in probes]
    planned = math.ceil(2 * sq[0] / (0.15 * vals[0]) ** 2)
    assert tr.n_pilot == 1 and tr.n_probes == max(1, planned) and tr.converged
    assert tr.n_hvp == op.n_matvec == 1 + tr.n_probes
    # the estimate is the fresh probes' mean alone; the pilot only enters the variance bound
    assert tr.estimate == pytest.approx(sum(vals[1:]) / tr.n_probes, rel=1e-12)
    assert tr.stderr == pytest.approx(math.sqrt(2 * sum(sq) / len(sq) / tr.n_probes), rel=1e-12)
    # capped: the planned count does not fit, converged is false and stderr still reported
    capped = hutchinson_trace(_Dense(a), rel_tol=0.01, min_probes=1, max_probes=3, seed=5)
    assert (capped.n_pilot, capped.n_probes, capped.converged) == (1, 3, False)
    assert capped.stderr > 0.01 * abs(capped.estimate)
    # a count fixed in advance draws no pilot
    fixed = hutchinson_trace(_Dense(a), rel_tol=0.15, min_probes=4, max_probes=4, seed=5)
    assert (fixed.n_pilot, fixed.n_probes, fixed.n_hvp) == (0, 4, 4)
    assert fixed.estimate == pytest.approx(sum(vals[:4]) / 4, rel=1e-12)
    # the previous record's rel_var plans the count: no pilot, every probe is in the estimate
    prior = hutchinson_trace(_Dense(a), rel_tol=0.15, min_probes=2, max_probes=64, rel_var_prior=tr.rel_var, seed=5)
    want = math.ceil(tr.rel_var / 0.15**2 - 1e-9)
    assert (prior.n_pilot, prior.n_probes, prior.n_hvp) == (0, want, want)
    assert prior.estimate == pytest.approx(sum(vals[:want]) / want, rel=1e-12)
    assert tr.rel_var == pytest.approx(tr.n_probes * (tr.stderr / tr.estimate) ** 2)
    assert plan_trace_probes(0.5, 0.1, 2, 16) == (16, False)  # 50 needed
    assert plan_trace_probes(0.05, 0.1, 2, 16) == (5, True)
    assert plan_trace_probes(0.001, 0.1, 2, 16) == (2, True)


def test_trace_interval_uses_student_t_with_satterthwaite_df():
    from scipy import stats

    # ||Bg||^2 identical across probes: the variance is known, df inf, the normal quantile
    iv = trace_interval([1.0, 3.0], [8.0, 8.0], exact_part=10.0)
    assert iv.estimate == 12.0 and iv.se == pytest.approx(math.sqrt(2 * 8.0 / 2))
    assert iv.df == math.inf and iv.hi - iv.estimate == pytest.approx(stats.norm.ppf(0.975) * iv.se)
    # spread ||Bg||^2: df = 2 k mean^2 / var, the t quantile widens the interval
    sq = [4.0, 8.0, 12.0]
    iv = trace_interval([1.0, 2.0, 3.0], sq)
    df = 2 * 3 * 8.0**2 / 16.0
    assert iv.df == pytest.approx(df)
    assert iv.hi - iv.estimate == pytest.approx(stats.t.ppf(0.975, df) * iv.se)
    assert iv.estimate - iv.lo == pytest.approx(iv.hi - iv.estimate)
    assert trace_interval([5.0], [3.0]).df == 1.0  # one sample: no variance of the variance
    with pytest.raises(ValueError):
        trace_interval([], [])


def test_same_seed_reproduces_the_record_exactly():
    """The monitor seeds each record with seed + step: a resumed run writes the same records."""
    model, batch = tiny_bn_cnn().double(), _img_batch()
    a, b = (curvature_estimates(model, batch, seed=1500, **CURVATURE_DEFAULTS).record() for _ in range(2))
    c = curvature_estimates(model, batch, seed=1501, **CURVATURE_DEFAULTS).record()
    drop = ("curv_seconds",)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert a["hessian_trace_pilot_probes"] == 1
    assert a["hessian_trace_n_hvp"] == a["trace_probes"] + 1
    assert c["hessian_trace"] != a["hessian_trace"]
