"""Curvature of the training loss on a fixed batch: top Hessian eigenvalue and Hessian trace.

Plain functions, no Lightning. Everything here is matrix-free: the Hessian is only touched through
Hessian-vector products (HVPs), and every estimate reports its error and the number of HVPs spent.

Estimators
----------
``lambda_max``
    Largest *algebraic* eigenvalue of the Hessian H of the mean cross-entropy (nats) on the batch,
    by symmetric Lanczos with full re-orthogonalisation (the same kernel as
    ``hessian_eigenthings.lanczos(which="LA")``, re-implemented so that it can (a) start from a
    given vector -- the previous record's top eigenvector (warm start) -- and (b) stop as soon as
    the Ritz residual ``||H y - theta y|| / |theta| <= eig_tol``). The Ritz residual
    ``beta_m |s_m|`` equals the true residual ``||H y - theta y||`` in exact arithmetic (and to
    rounding with full re-orthogonalisation); by Bauer-Fike some eigenvalue of H lies within that
    residual of ``theta``, and by Kato-Temple the error is <= residual^2 / gap. Ritz values
    under-estimate ``lambda_max`` (Cauchy interlacing), so the reported value is a lower bound
    that is within ``residual`` of an eigenvalue. (hessian-eigenthings' power iteration returns
    the largest |lambda|, not the largest lambda, and converges slowly with a small gap: not used.)

``hessian_trace``
    Hutchinson with Rademacher probes g: ``tr(H) = E[g^T H g]``. Standard error: for symmetric B,
    ``Var(g^T B g) = 2 (||B||_F^2 - sum_i B_ii^2) <= 2 ||B||_F^2`` and ``||B g||^2`` is an
    unbiased estimate of ``||B||_F^2``; ``B g`` is the product the probe already paid for, so every
    probe also estimates this variance bound, and ``stderr = sqrt(2 mean_i ||B g_i||^2 / m)``
    exists from the first probe (the sample standard error of 2-3 probe values has 1-2 degrees
    of freedom: too noisy to stop on; it is reported beside it as ``sample_stderr``). Measured on
    ResNet-18 x0.25 with BN: bound / sample variance of 16 probes 0.85 (the diagonal term is
    negligible) and ``||B g||^2`` varies by 3% between probes. How many probes: see "Trace
    stopping rule" below (a pilot probe sets the count, fresh probes give the estimate).
    ``trace_method="deflated"`` (what ``"auto"`` picks for BN models; Hutch++ with a Krylov
    sketch): the Lanczos basis Q is the sketch, ``tr(Q^T H Q) = sum(alpha_i)`` exactly, and
    projected probes estimate ``tr(P H P)``, ``P = I - Q Q^T`` (B = P H P above; unbiased given Q).
    ``"hutchinson"``: no deflation, and the cold Lanczos run's Rademacher start is its first
    probe (``g^T H g = n alpha_1``, ``||H g||^2 = n ||H q_1||^2``), so that probe costs no
    product. Measured on ResNet-18 x0.25 with BN (one probe's relative standard error, plain vs
    deflated): after 30 steps 6.0% vs 6.0% (Krylov part 0.3% of the trace: one probe suffices and
    plain saves it), after 530 steps 20.3% vs 18.8% (Krylov part 8%; 4 products either way),
    after 1530 steps 30.7% vs 26.2% (Krylov part 24%; 9 vs 7 products for 10%). Most records
    come late in a run, so deflation is the default. ``"hutch++"`` calls
    ``hessian_eigenthings.hutch_plus_plus`` with a fixed budget.
    ``"ggn_exact"``: for networks that are linear in each single weight (ReLU convnets with
    residual sums and no BN, or BN in eval mode; see :func:`piecewise_linear_in_each_weight`)
    ``d^2 f / d w_i^2 = 0``, so diag(Hessian) = diag(GGN) and BackPACK's exact GGN diagonal gives
    the exact Hessian trace (stderr 0, no HVPs; tested against the exact Hessian). This matters for
    the BN-free ResNet, whose Hessian trace is small against the Hutchinson noise (one probe's
    relative std ~160% measured), so Hutchinson would need hundreds of probes for 10%.
    ``"auto"`` (the monitor's default) picks ``"ggn_exact"`` where that identity holds and
    ``"deflated"`` otherwise.

``ggn_trace``
    The trace of the generalised Gauss-Newton matrix J^T H_loss J (exact, from BackPACK's
    ``DiagGGNExact``). It is NOT the Hessian trace (it drops the term with the network's second
    derivatives, and is PSD); it exists only where BackPACK supports the model: the BN-free
    ResNet, or BN in eval mode. BackPACK cannot give the Hessian diagonal of a residual network.

Trace stopping rule
-------------------
The rule before (``trace_pilot_probes=0``, kept for comparison): draw probes until
``stderr <= trace_rel_tol * |estimate|``, both from the same probes. Because the variance bound
hardly moves between probes, this stops as soon as ``|mean|`` happens to be large: the count
selects on the estimate's own error. A record that stopped early reads too far from zero, one
that ran long too close to it. Over all records about 95% still lie within 2 SE (errors of both
signs average out), but each record's error is predictable from its probe count. Records that
stopped before their state's median count were on average +0.76 SE off and those after it -0.87
SE on small BN models with the exact trace; +0.83 / -0.62 on ResNet-18 x0.0625 (400-probe
references); +0.98 / -1.05 on ResNet-18 x0.25 (CIFAR-sized synthetic data, batch 128, steps 530
and 1030, replayed on 200-probe pools). All measured with benchmarks/trace_calibration.py. The
1.45-1.9 SE misses users saw are of this kind.

Two-stage rule (Stein 1945; default ``trace_pilot_probes=1``): stage 1 draws the pilot probe(s);
their estimate ``t`` and variance bound ``v = 2 mean ||B g||^2`` only choose the count
``m = ceil(v / (trace_rel_tol * t)^2)``, clipped to ``[trace_min_probes, trace_max_probes]``.
Stage 2 draws ``m`` fresh probes and the estimate is their mean alone (plus the exact Krylov
part). Given the Lanczos basis, the stage-2 probes are independent of the pilot, hence of ``m``:
the estimate is unbiased whatever count was chosen, and ``stderr = sqrt(2 mean ||B g||^2 / m)``
(mean over pilot and stage-2 probes: all estimate the same ``||B||_F^2``) is its standard error.
``min == max`` fixes the count in advance (no pilot). With ``trace_method="hutchinson"`` the cold
Lanczos start is the pilot, at no product. The tolerance becomes a target rather than a
guarantee: the pilot's ``t`` is noisy, so about a third of the records end somewhat above it
(median relative SE 9.3% for a 10% target, measured); ``hessian_trace_rel_stderr`` reports what
each record achieved and ``converged`` that ``m`` fit under the cap.
Cost, measured with benchmarks/trace_calibration.py in one run per model on the same seeds (trace
products per record, two-stage vs sequential; coverage within 2 SE; mean error in SE of the early
/ late stoppers):

================================  ===========  =============  ==========================
states                            trace HVPs   within 2 SE    early / late (two-stage)
================================  ===========  =============  ==========================
small BN CNN, exact trace         4.86 / 3.74  95.8% / 96.8%  -0.10 / -0.07
ResNet-18 x0.0625, 16x16          12.0 / 11.4  95.8% / 94.9%  -0.01 / -0.03
ResNet-18 x0.25, step 530 (pool)  5.52 / 4.21  96.7% / 96.6%  -0.05 / +0.04 (both steps)
ResNet-18 x0.25, step 1030        8.42 / 6.72
================================  ===========  =============  ==========================

That is the pilot probe plus ~10-20% more probes, since ``1/t^2`` overshoots on average when
``t`` is noisy: +0.6 to +1.7 products, +3% to +11% of a whole record (14.0 vs 12.9 products on
the small CNN, 19.8 vs 19.2 on ResNet x0.0625).

BatchNorm
---------
``bn_mode="train"`` (default): the Hessian of the objective being trained, i.e. BN normalises with
the curvature batch's own statistics. Every forward in train mode would update the running
statistics, so :func:`bn_mode_context` sets ``track_running_stats=False`` on every BN layer for the
duration (the functional batch-norm then receives no running buffers), snapshots the running
mean/var/num_batches_tracked/momentum and restores everything afterwards.
``bn_mode="eval"``: BN uses its running statistics -- a different function whose curvature can
differ by orders of magnitude early in training; only as an explicit option. The mode is part of
every record.

HVP engine
----------
``hvp="shared_graph"`` (default): one forward + one ``create_graph=True`` gradient per record;
every HVP is one double-backward through that retained graph (``retain_graph=True``), shared by
the eigenvalue and the trace. ``hvp="operator"``: ``hessian_eigenthings.HessianOperator`` on a
one-batch list, which rebuilds forward + gradient graph for every product.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from hessian_eigenthings import CurvatureOperator, HessianOperator, hutch_plus_plus, supervised_loss
from torch import Tensor, nn

BNMode = Literal["train", "eval"]
TraceMethod = Literal["auto", "deflated", "hutchinson", "hutch++", "ggn_exact"]
HvpEngine = Literal["shared_graph", "operator"]
LossFn = Callable[[nn.Module, Any], Tensor]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_EPS = 1e-30


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


@contextlib.contextmanager
def bn_mode_context(model: nn.Module, mode: BNMode) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` for curvature work without touching BN running statistics.

    ``"train"``: every module in train mode; each BN layer gets ``track_running_stats=False`` so it
    normalises with batch statistics and updates nothing. ``"eval"``: every module in eval mode
    (BN uses running statistics). On exit every module's ``training`` flag, each BN layer's
    ``track_running_stats`` and ``momentum`` are restored, and the running mean / var /
    ``num_batches_tracked`` are copied back from a snapshot (belt and braces).
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' or 'eval', got {mode!r}")
    training_flags = [(m, m.training) for m in model.modules()]
    saved = []
    for bn in batchnorm_layers(model):
        buffers = {
            name: buf.detach().clone()
            for name in ("running_mean", "running_var", "num_batches_tracked")
            if (buf := getattr(bn, name, None)) is not None
        }
        saved.append((bn, bn.track_running_stats, bn.momentum, buffers))
    try:
        model.train(mode == "train")
        if mode == "train":
            for bn, *_ in saved:
                bn.track_running_stats = False
        yield model
    finally:
        for bn, track, momentum, buffers in saved:
            bn.track_running_stats = track
            bn.momentum = momentum
            with torch.no_grad():
                for name, value in buffers.items():
                    getattr(bn, name).copy_(value)
        for module, flag in training_flags:
            module.training = flag


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class SharedGraphHessian(CurvatureOperator):
    """Hessian of ``loss_fn(model, batch)`` with the gradient graph built once.

    A hessian-eigenthings ``CurvatureOperator`` (so its algorithms accept it). Construction runs one
    forward and one ``create_graph=True`` gradient; each :meth:`matvec` is one double-backward
    with ``retain_graph=True``. Call :meth:`release` (or use it as a context manager) to free the
    graph. ``n_matvec`` counts products.
    """

    def __init__(self, model: nn.Module, batch: Any, loss_fn: LossFn) -> None:
        self._param_list = _params(model)
        self._sizes = [p.numel() for p in self._param_list]
        self._size = sum(self._sizes)
        first = self._param_list[0]
        self._device, self._dtype = first.device, first.dtype
        with torch.enable_grad():
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, self._param_list, create_graph=True, allow_unused=True)
        self.loss = loss.detach()
        self.grad_flat = torch.cat(
            [
                (g.detach() if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, self._param_list, strict=True)
            ]
        )
        # Keep only the gradients that participate in the graph.
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads: list[Tensor] | None = [grads[i] for i in self._live]
        self.n_matvec = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def matvec(self, v: Tensor) -> Tensor:
        if v.shape != (self._size,):
            raise ValueError(f"expected vector of shape ({self._size},), got {tuple(v.shape)}")
        return self._products(v[None], batched=False)[0]

    def matmat(self, vs: Tensor) -> Tensor:
        """``H @ v`` for each row of ``vs`` (k x n) in one vmapped double-backward
        (``is_grads_batched=True``); counts k products."""
        return self._products(vs, batched=vs.shape[0] > 1)

    def _products(self, vs: Tensor, *, batched: bool) -> Tensor:
        """Rows of ``vs`` times H through the shared graph; one plain double-backward when not batched."""
        if self._grads is None:
            raise RuntimeError("SharedGraphHessian used after release()")
        k = vs.shape[0]
        pieces = list(torch.split(vs, self._sizes, dim=1))
        shape = (lambda p: (k, *p.shape)) if batched else (lambda p: p.shape)
        grad_outputs = [pieces[i].reshape(shape(self._param_list[i])) for i in self._live]
        with torch.enable_grad():
            hv = torch.autograd.grad(
                self._grads,
                self._param_list,
                grad_outputs=grad_outputs,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        self.n_matvec += k
        return torch.cat(
            [
                (h if h is not None else torch.zeros(shape(p), device=p.device, dtype=p.dtype)).reshape(k, -1)
                for h, p in zip(hv, self._param_list, strict=True)
            ],
            dim=1,
        ).detach()

    def release(self) -> None:
        self._grads = None

    def __enter__(self) -> SharedGraphHessian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CountingOperator(CurvatureOperator):
    """Wrap any CurvatureOperator and count its products (for ``HessianOperator``)."""

    def __init__(self, inner: CurvatureOperator) -> None:
        self.inner, self.n_matvec = inner, 0

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def matvec(self, v: Tensor) -> Tensor:
        self.n_matvec += 1
        with torch.enable_grad():
            return self.inner.matvec(v).detach()


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device if device.type != "mps" else "cpu")
    gen.manual_seed(int(seed))
    return gen


def _rademacher(n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    gdev = gen.device
    v = torch.randint(0, 2, (n,), generator=gen, device=gdev, dtype=torch.int8)
    return v.to(device=device, dtype=dtype) * 2 - 1


# --------------------------------------------------------------------------------------------
# lambda_max: Lanczos with a warm start and a residual stopping rule
# --------------------------------------------------------------------------------------------
@dataclass
class EigResult:
    """Top algebraic eigenpair estimate.

    ``residual`` = ||H v - lambda v|| (Ritz residual), ``rel_residual`` = residual / |lambda|,
    ``n_hvp`` products spent, ``converged`` whether ``rel_residual <= tol``. ``basis`` (m x n,
    orthonormal rows) and ``alphas`` are the Lanczos basis and tridiagonal diagonal, reusable by
    the deflated trace estimator (``Q^T H Q`` has trace ``sum(alphas)``).
    """

    eigenvalue: float
    eigenvector: Tensor
    residual: float
    rel_residual: float
    n_hvp: int
    iterations: int
    converged: bool
    basis: list[Tensor] = field(repr=False, default_factory=list)
    alphas: list[float] = field(repr=False, default_factory=list)
    warm_start: bool = False
    #: cold start only: the start vector is a Rademacher probe g, so the first product is also a
    #: Hutchinson sample, ``(g^T H g, ||H g||^2)``, which the trace reuses (one product saved).
    start_probe: tuple[float, float] | None = None


def lanczos_top_eig(
    operator: CurvatureOperator,
    *,
    v0: Tensor | None = None,
    tol: float = 1e-2,
    max_iter: int = 40,
    min_iter: int = 2,
    seed: int = 0,
) -> EigResult:
    """Largest algebraic eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    Starts from ``v0`` (warm start; a Rademacher vector if None or degenerate, whose first product
    is returned as ``start_probe`` for the trace) and stops once
    the Ritz residual of the top Ritz pair satisfies ``residual <= tol * |theta|`` (checked every
    iteration from ``min_iter`` on; an exactly invariant Krylov space also stops it), or after
    ``max_iter`` products. Each iteration costs one ``operator.matvec``.
    """
    n = operator.size
    device, dtype = operator.device, operator.dtype
    max_iter = max(1, min(max_iter, n))
    v: Tensor | None = None
    if v0 is not None:
        cand = v0.detach().to(device=device, dtype=dtype).reshape(-1)
        if cand.shape[0] == n and bool(torch.isfinite(cand).all()) and float(cand.norm()) > 1e-12:
            v = cand
    warm = v is not None
    if v is None:
        v = _rademacher(n, _generator(torch.device("cpu"), seed), device, dtype)
    q = v / v.norm()
    start_probe: tuple[float, float] | None = None

    basis: list[Tensor] = [q]
    alphas: list[float] = []
    betas: list[float] = []
    theta, y_coeffs, residual = 0.0, None, math.inf
    converged = False
    for j in range(max_iter):
        w = operator.matvec(basis[j])
        alpha = float(torch.dot(basis[j], w))
        alphas.append(alpha)
        if j == 0 and not warm:  # q = g / sqrt(n): g^T H g = n alpha, ||H g||^2 = n ||H q||^2
            start_probe = (n * alpha, n * float(torch.dot(w, w)))
        # Full re-orthogonalisation (classical Gram-Schmidt, twice): w <- w - Q (Q^T w).
        qmat = torch.stack(basis)
        for _ in range(2):
            w = w - qmat.T @ (qmat @ w)
        beta = float(w.norm())
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(tri)
        top = int(torch.argmax(evals))
        theta = float(evals[top])
        y_coeffs = evecs[:, top]
        residual = beta * abs(float(y_coeffs[-1]))
        invariant = beta <= 1e-10 * max(abs(theta), 1e-30) or beta < 1e-30
        if (j + 1 >= min_iter and residual <= tol * abs(theta)) or invariant:
            converged = residual <= tol * abs(theta)
            break
        if j + 1 < max_iter:
            betas.append(beta)
            basis.append(w / beta)
    assert y_coeffs is not None
    coeffs = y_coeffs.to(device=device, dtype=dtype)
    eigvec = torch.zeros(n, device=device, dtype=dtype)
    for c, b in zip(coeffs, basis, strict=True):
        eigvec.add_(b, alpha=float(c))
    eigvec /= eigvec.norm().clamp_min(1e-30)
    return EigResult(
        eigenvalue=theta,
        eigenvector=eigvec,
        residual=residual,
        rel_residual=residual / max(abs(theta), _EPS),
        n_hvp=len(alphas),
        iterations=len(alphas),
        converged=converged,
        basis=basis,
        alphas=alphas,
        warm_start=warm,
        start_probe=start_probe,
    )


# --------------------------------------------------------------------------------------------
# Hessian trace: (deflated) Hutchinson with a relative-stderr stopping rule
# --------------------------------------------------------------------------------------------
@dataclass
class TraceEstimate:
    """Trace estimate with ``stderr`` (standard error; for Hutchinson the Rademacher variance
    bound, see the module doc), ``sample_stderr`` (sample std of the probe values / sqrt(probes);
    None below 2 probes), ``n_hvp`` products (pilot included), ``n_probes`` (probes averaged in
    the estimate), ``n_pilot`` (probes that only chose ``n_probes``; not in the estimate),
    ``exact_part`` (trace of the deflated subspace, exact) and ``converged``: the two-stage
    rule's planned count fit under the cap (sequential/fixed count: the stderr rule was met)."""

    estimate: float
    stderr: float
    n_hvp: int
    n_probes: int
    converged: bool
    method: str
    exact_part: float = 0.0
    deflation_rank: int = 0
    sample_stderr: float | None = None
    n_pilot: int = 0

    @property
    def rel_stderr(self) -> float:
        if not math.isfinite(self.stderr):
            return math.inf
        return self.stderr / max(abs(self.estimate), _EPS)


def _plan_probes(
    pilot_values: Sequence[float],
    pilot_sq_norms: Sequence[float],
    exact_part: float,
    rel_tol: float,
    min_probes: int,
    max_probes: int,
) -> tuple[int, bool]:
    """Stage-1 decision of the two-stage rule: the probe count ``m`` that the pilot predicts for
    ``stderr <= rel_tol * |trace|``, i.e. ``ceil(v / (rel_tol * |t|)^2)`` with ``t`` the pilot's
    trace estimate and ``v = 2 mean ||B g||^2`` its variance bound per probe, clipped to
    ``[min_probes, max_probes]``; and whether it fit under ``max_probes``."""
    t = exact_part + math.fsum(pilot_values) / len(pilot_values)
    v = 2.0 * math.fsum(pilot_sq_norms) / len(pilot_sq_norms)
    target = (rel_tol * abs(t)) ** 2
    if v <= 0.0:
        need = 1.0
    elif target <= 0.0 or not math.isfinite(target):
        need = math.inf
    else:
        need = v / target
    fits = need <= max_probes
    m = max_probes if not fits else max(min_probes, math.ceil(need - 1e-9))
    return min(m, max_probes), fits


def hutchinson_trace(
    operator: CurvatureOperator,
    *,
    basis: Sequence[Tensor] = (),
    exact_part: float = 0.0,
    rel_tol: float = 0.05,
    min_probes: int = 8,
    max_probes: int = 64,
    seed: int = 0,
    probe_batch: int = 1,
    start_probe: tuple[float, float] | None = None,
    pilot_probes: int = 1,
) -> TraceEstimate:
    """Hutchinson estimate of ``tr(A)``, optionally deflated by an orthonormal ``basis`` Q.

    With ``basis`` given, ``exact_part`` must be ``tr(Q^T A Q)``; probes are projected,
    ``g <- (I - Q Q^T) g``, and the estimate is ``exact_part + mean(g^T A g)``. Rademacher probes;
    ``stderr`` is the variance-bound standard error ``sqrt(2 mean ||B g||^2 / probes)``,
    ``B = (I - QQ^T) A (I - QQ^T)`` (module doc).

    Probe count (module doc, "Trace stopping rule"): with ``pilot_probes >= 1`` (default) a two-stage
    rule. Stage 1 draws ``pilot_probes`` probes whose trace estimate and variance bound only
    choose ``m = ceil(v / (rel_tol * |t|)^2)`` in ``[min_probes, max_probes]``; stage 2 draws
    ``m`` fresh probes, and the estimate is their mean alone, so its error is independent of the
    decision. ``stderr`` uses the variance-bound samples of both stages (all estimate the same
    ``||B||_F^2``) over the ``m`` estimate probes. ``converged``: ``m`` fit under ``max_probes``.
    ``min_probes == max_probes`` fixes the count in advance: no pilot is drawn.
    ``pilot_probes=0`` is the old sequential rule (stop at the first probe count with
    ``stderr <= rel_tol * |estimate|``), kept for comparison: the estimate that meets the rule
    early is biased away from zero, one that meets it late towards it (see
    benchmarks/trace_calibration.py).

    ``probe_batch > 1`` applies that many probes per call of ``operator.matmat`` (batched HVPs,
    if the operator has it). ``start_probe`` ``(g^T A g, ||A g||^2)`` of a Rademacher probe
    already applied (Lanczos' cold start, see :class:`EigResult`) is a free probe: the first pilot
    probe (or, with the sequential rule, the first probe); only without deflation (a projected
    probe is a different sample).
    """
    if start_probe is not None and len(basis):
        raise ValueError("start_probe is an undeflated sample: it cannot be combined with a basis")
    n, device, dtype = operator.size, operator.device, operator.dtype
    gen = _generator(device if device.type == "cuda" else torch.device("cpu"), seed + 7919)
    qmat = torch.stack(list(basis)) if len(basis) else None
    max_probes = max(1, int(max_probes))
    min_probes = min(max(1, int(min_probes)), max_probes)  # the cap wins, as it always did
    probe_batch = max(1, int(probe_batch))
    pilot_probes = max(0, int(pilot_probes))
    matmat = getattr(operator, "matmat", None)
    n_hvp = 0

    def draw(count: int) -> tuple[list[float], list[float]]:
        """``count`` fresh probes in batches of ``probe_batch``: ``g^T B g`` and ``||B g||^2``."""
        nonlocal n_hvp
        values: list[float] = []
        sq_norms: list[float] = []
        while len(values) < count:
            kb = min(probe_batch, count - len(values))
            gs = torch.stack([_rademacher(n, gen, device, dtype) for _ in range(kb)])
            if qmat is not None:
                gs = gs - (gs @ qmat.T) @ qmat
            if kb > 1 and matmat is not None:
                ags = matmat(gs)
            else:
                ags = torch.stack([operator.matvec(g) for g in gs])
            bgs = ags - (ags @ qmat.T) @ qmat if qmat is not None else ags
            values.extend(float(x) for x in (gs * ags).sum(dim=1))
            sq_norms.extend(float(x) for x in (bgs * bgs).sum(dim=1))
            n_hvp += kb
        return values, sq_norms

    free = ([start_probe[0]], [start_probe[1]]) if start_probe is not None else ([], [])
    samples: list[float]
    sq_norms: list[float]  # ||B g||^2, unbiased for ||B||_F^2
    pilot_sq: list[float] = []
    n_pilot = 0
    if pilot_probes and min_probes < max_probes:
        # Two-stage rule: the pilot only decides how many probes the estimate gets.
        pv, ps = draw(max(0, pilot_probes - len(free[0])))
        pilot_values, pilot_sq = free[0] + pv, free[1] + ps
        n_pilot = len(pilot_values)
        m, converged = _plan_probes(pilot_values, pilot_sq, exact_part, rel_tol, min_probes, max_probes)
        samples, sq_norms = draw(m)
        estimate = exact_part + math.fsum(samples) / m
        stderr = math.sqrt(2.0 * math.fsum(pilot_sq + sq_norms) / (len(pilot_sq) + m) / m)
    elif pilot_probes:
        # Count fixed in advance (min == max): nothing to decide, the free probe is a sample.
        samples, sq_norms = list(free[0]), list(free[1])
        v, s = draw(max_probes - len(samples))
        samples, sq_norms = samples + v, sq_norms + s
        estimate = exact_part + math.fsum(samples) / len(samples)
        stderr = math.sqrt(2.0 * math.fsum(sq_norms) / len(samples) / len(samples))
        converged = stderr <= rel_tol * abs(estimate)
    else:
        # Sequential rule (comparison only): stop at the first count that meets the tolerance.
        samples, sq_norms = list(free[0]), list(free[1])
        estimate, stderr, converged = exact_part, math.inf, False
        while True:
            k = len(samples)
            if k:
                estimate = exact_part + math.fsum(samples) / k
                stderr = math.sqrt(2.0 * math.fsum(sq_norms) / k / k)
                if k >= min_probes and stderr <= rel_tol * abs(estimate):
                    converged = True
                    break
            if k >= max_probes:
                break
            v, s = draw(min(probe_batch, max_probes - k))
            samples, sq_norms = samples + v, sq_norms + s
    sample_stderr = None
    if len(samples) >= 2:
        k = len(samples)
        mean = math.fsum(samples) / k
        sample_stderr = math.sqrt(math.fsum((s - mean) ** 2 for s in samples) / (k - 1) / k)
    return TraceEstimate(
        estimate=estimate,
        stderr=stderr,
        n_hvp=n_hvp,
        n_probes=len(samples),
        converged=converged,
        method="deflated" if qmat is not None else "hutchinson",
        exact_part=exact_part,
        deflation_rank=0 if qmat is None else qmat.shape[0],
        sample_stderr=sample_stderr,
        n_pilot=n_pilot,
    )


def hutchpp_trace(
    operator: CurvatureOperator, *, num_matvecs: int = 30, seed: int = 0, rel_tol: float = 0.05
) -> TraceEstimate:
    """``hessian_eigenthings.hutch_plus_plus`` with a fixed budget (for comparison)."""
    res = hutch_plus_plus(operator, num_matvecs=num_matvecs, seed=seed)
    m_per = max(1, num_matvecs // 3)
    n_hvp = 3 * m_per if operator.size >= m_per else 2 * m_per + operator.size
    return TraceEstimate(
        estimate=float(res.estimate),
        stderr=float(res.stderr),
        n_hvp=n_hvp,
        n_probes=m_per,
        converged=float(res.stderr) <= rel_tol * abs(float(res.estimate)),
        method="hutch++",
    )


# --------------------------------------------------------------------------------------------
# One curvature record
# --------------------------------------------------------------------------------------------
#: Estimator settings used by CurvatureMonitor unless configured otherwise; chosen by measurement
#: with benchmarks/curvature_overhead.py and benchmarks/trace_calibration.py (docs/metrics.md).
#: ``trace_pilot_probes`` 1: the two-stage trace rule (module doc); 0 is the old, biased one.
CURVATURE_DEFAULTS: dict[str, Any] = {
    "eig_tol": 2e-2,
    "eig_max_iter": 30,
    "trace_method": "auto",
    "trace_rel_tol": 0.1,
    "trace_min_probes": 1,
    "trace_max_probes": 16,
    "trace_pilot_probes": 1,
    "probe_batch": 1,
}


@dataclass
class CurvatureResult:
    eig: EigResult
    trace: TraceEstimate
    loss: float
    bn_mode: str
    batch_size: int
    n_hvp: int
    seconds: float
    hvp_engine: str

    def record(self) -> dict[str, Any]:
        """Flat dict of python scalars: the ``curvature`` record body (keys in docs/metrics.md)."""
        return {
            "lambda_max": self.eig.eigenvalue,
            "lambda_max_method": "lanczos_la",
            "lambda_max_residual": self.eig.residual,
            "lambda_max_rel_residual": self.eig.rel_residual,
            "lambda_max_n_hvp": self.eig.n_hvp,
            "lambda_max_converged": bool(self.eig.converged),
            "lambda_max_warm_start": bool(self.eig.warm_start),
            "hessian_trace": self.trace.estimate,
            "hessian_trace_stderr": self.trace.stderr,
            "hessian_trace_rel_stderr": self.trace.rel_stderr,
            "hessian_trace_sample_stderr": self.trace.sample_stderr,
            "hessian_trace_n_hvp": self.trace.n_hvp,
            "hessian_trace_n_probes": self.trace.n_probes,
            "hessian_trace_pilot_probes": self.trace.n_pilot,
            "hessian_trace_converged": bool(self.trace.converged),
            "hessian_trace_method": self.trace.method,
            "hessian_trace_deflation_rank": self.trace.deflation_rank,
            "curv_loss_nats": self.loss,
            "curv_batch_size": self.batch_size,
            "curv_n_hvp": self.n_hvp,
            "curv_seconds": self.seconds,
            "bn_mode": self.bn_mode,
        }


#: Leaf modules under which the network output is linear in every single weight (for a fixed
#: ReLU activation pattern): then d^2 f / d w_i^2 = 0 and diag(Hessian) = diag(GGN) exactly.
_PIECEWISE_LINEAR_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.ReLU,
    nn.Identity,
    nn.Flatten,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
)


def piecewise_linear_in_each_weight(model: nn.Module, bn_mode: BNMode = "train") -> bool:
    """True if every leaf module keeps the output linear in each single weight.

    For such a network (convs, linears, ReLU, average pooling, residual *sums* in forward, BN in
    eval mode, which is a fixed affine map) the loss Hessian's diagonal equals the GGN diagonal,
    so BackPACK's exact GGN trace is the exact Hessian trace. BN in train mode (batch statistics
    divide by a function of the weights) breaks it. The check sees modules, not the forward code:
    it assumes the forward only adds/chains them (true for CifarResNet18).
    """
    allowed = _PIECEWISE_LINEAR_LEAVES + (_BN_TYPES if bn_mode == "eval" else ())
    leaves = [m for m in model.modules() if not list(m.children())]
    return bool(leaves) and all(isinstance(m, allowed) for m in leaves)


def cross_entropy_loss_fn(criterion: nn.Module | None = None) -> LossFn:
    return supervised_loss(criterion if criterion is not None else nn.CrossEntropyLoss())


def curvature_estimates(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    criterion: nn.Module | None = None,
    *,
    bn_mode: BNMode = "train",
    v0: Tensor | None = None,
    eig_tol: float = 1e-2,
    eig_max_iter: int = 40,
    trace_method: TraceMethod = "deflated",
    trace_rel_tol: float = 0.05,
    trace_min_probes: int = 8,
    trace_max_probes: int = 48,
    trace_pilot_probes: int = 1,
    hutchpp_matvecs: int = 30,
    seed: int = 0,
    hvp: HvpEngine = "shared_graph",
    probe_batch: int = 1,
) -> CurvatureResult:
    """``lambda_max`` and Hessian trace of ``criterion(model(x), y)`` on one batch.

    ``batch`` must already be on the model's device. The model's parameters, gradients (``.grad``
    is never written: products use ``torch.autograd.grad``), BN running statistics and the global
    RNG are left untouched (probes use private generators seeded with ``seed``).
    Hutchinson's probe count follows the two-stage rule with ``trace_pilot_probes`` pilot probes
    (0: the old sequential rule; module doc, "Trace stopping rule").
    """
    loss_fn = cross_entropy_loss_fn(criterion)
    if trace_method == "auto":
        trace_method = "ggn_exact" if piecewise_linear_in_each_weight(model, bn_mode) else "deflated"
    elif trace_method == "ggn_exact" and not piecewise_linear_in_each_weight(model, bn_mode):
        raise ValueError(
            "trace_method='ggn_exact' is the Hessian trace only for nets that are linear in each "
            "single weight (Conv/Linear/ReLU/avg-pool/residual sums, BN only in eval mode)"
        )
    t0 = time.perf_counter()
    with bn_mode_context(model, bn_mode):
        if hvp == "shared_graph":
            op: Any = SharedGraphHessian(model, batch, loss_fn)
            loss = float(op.loss)
        elif hvp == "operator":
            op = CountingOperator(HessianOperator(model, [batch], loss_fn, full_dataset=True))
            with torch.no_grad():
                loss = float(loss_fn(model, batch))
        else:
            raise ValueError(f"hvp must be 'shared_graph' or 'operator', got {hvp!r}")
        try:
            eig = lanczos_top_eig(op, v0=v0, tol=eig_tol, max_iter=eig_max_iter, seed=seed)
            if trace_method in ("deflated", "hutchinson"):
                # deflated: the Lanczos basis's part of the trace is exact, probes estimate the
                # rest; hutchinson: Lanczos' cold Rademacher start is already the first probe
                from_lanczos = (
                    {"basis": eig.basis, "exact_part": math.fsum(eig.alphas)}
                    if trace_method == "deflated"
                    else {"start_probe": eig.start_probe}
                )
                tr = hutchinson_trace(
                    op,
                    **from_lanczos,
                    rel_tol=trace_rel_tol,
                    min_probes=trace_min_probes,
                    max_probes=trace_max_probes,
                    pilot_probes=trace_pilot_probes,
                    seed=seed,
                    probe_batch=probe_batch,
                )
            elif trace_method == "hutch++":
                tr = hutchpp_trace(op, num_matvecs=hutchpp_matvecs, seed=seed, rel_tol=trace_rel_tol)
            elif trace_method != "ggn_exact":
                raise ValueError(f"unknown trace_method {trace_method!r}")
        finally:
            if isinstance(op, SharedGraphHessian):
                op.release()
    eig.basis, eig.alphas = [], []  # free the Krylov basis (m x n floats)
    if trace_method == "ggn_exact":
        # diag(H) = diag(GGN) for nets that are linear in each single weight (checked above).
        ggn = ggn_trace(model, batch, bn_mode=bn_mode)
        tr = TraceEstimate(
            estimate=ggn["ggn_trace"],
            stderr=0.0,
            n_hvp=0,
            n_probes=0,
            converged=True,
            method="ggn_exact",
        )
    seconds = time.perf_counter() - t0
    return CurvatureResult(
        eig=eig,
        trace=tr,
        loss=loss,
        bn_mode=bn_mode,
        batch_size=int(batch[0].shape[0]),
        n_hvp=int(op.n_matvec),
        seconds=seconds,
        hvp_engine=hvp,
    )


# --------------------------------------------------------------------------------------------
# GGN trace with BackPACK (exact, where BackPACK supports the model)
# --------------------------------------------------------------------------------------------
def backpack_extend(model: nn.Module) -> nn.Module:
    """BackPACK-extend ``model`` (in place); with BackPACK's graph converter only where the model's
    forward is more than a chain of modules (residual sums need it; a single layer or an
    ``nn.Sequential`` must not use it: the converter would inline the layer as a function)."""
    from backpack import extend

    if not list(model.children()) or isinstance(model, nn.Sequential):
        return extend(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered node that may break")
        return extend(model, use_converter=True)


def ggn_trace(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    *,
    bn_mode: BNMode = "eval",
) -> dict[str, Any]:
    """Exact trace of the generalised Gauss-Newton matrix (NOT the Hessian) with BackPACK.

    ``GGN = sum_n J_n^T H_n J_n / N`` for the mean cross-entropy, H_n the softmax Hessian of sample
    n; ``ggn_trace = sum of BackPACK's DiagGGNExact``. Exact (error 0) but costs about one backward
    pass per class. Works where BackPACK's extensions cover the model: the BN-free ResNet (via
    BackPACK's converter for residual additions) or BN in eval mode; BN in train mode mixes
    samples and BackPACK refuses it, so this raises ``ValueError`` for ``bn_mode="train"`` on a
    model with BN. The model is deep-copied (BackPACK's ``extend`` modifies modules).
    """
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    has_bn = bool(batchnorm_layers(model))
    if has_bn and bn_mode == "train":
        raise ValueError(
            "ggn_trace: BackPACK's DiagGGNExact does not support BatchNorm in train mode "
            "(samples are mixed); use bn_mode='eval' or a BN-free model"
        )
    t0 = time.perf_counter()
    clone = copy.deepcopy(model)
    clone.train(bn_mode == "train")
    if has_bn:
        clone.eval()
    x, y = batch
    ext_model = backpack_extend(clone)
    loss_mod = extend(nn.CrossEntropyLoss())
    params = _params(ext_model)
    for p in params:
        p.grad = None
    with torch.enable_grad(), warnings.catch_warnings():
        # BackPACK's converter registers full backward hooks; the input needs no gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss = loss_mod(ext_model(x), y)
        with backpack(DiagGGNExact()):
            loss.backward()
    total = torch.stack([p.diag_ggn_exact.sum() for p in params]).sum()  # type: ignore[attr-defined]  # BackPACK's
    return {
        "ggn_trace": float(total),
        "ggn_trace_stderr": 0.0,
        "ggn_trace_method": "backpack_diag_ggn_exact",
        "ggn_trace_seconds": time.perf_counter() - t0,
        "bn_mode": bn_mode,
    }
