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
    exists from the first probe. How many probes, and the interval: "Trace interval" below.
    ``trace_method="deflated"`` (what ``"auto"`` picks for BN models; Hutch++ with a Krylov
    sketch): the Lanczos basis Q is the sketch, ``tr(Q^T H Q) = sum(alpha_i)`` exactly, and
    projected probes estimate ``tr(P H P)``, ``P = I - Q Q^T`` (B = P H P above; unbiased given Q).
    ``"hutchinson"``: no deflation, and the cold Lanczos run's Rademacher start is a probe
    (``g^T H g = n alpha_1``, ``||H g||^2 = n ||H q_1||^2``) that costs no product. Measured on
    ResNet-18 x0.25 with BN (one probe's relative standard error, plain vs deflated): after 30
    steps 6.0% vs 6.0% (Krylov part 0.3% of the trace), after 530 steps 20.3% vs 18.8% (Krylov
    part 8%), after 1530 steps 30.7% vs 26.2% (Krylov part 24%; 9 vs 7 products for 10%). Most
    records come late in a run, so deflation is the default; both are supported.
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

Trace interval
--------------
The record logs ``trace_lo``/``trace_hi``, a 95% Student-t interval (:func:`trace_interval`):
``estimate +/- t_{0.975, df} * stderr``, ``df`` the Satterthwaite degrees of freedom of the
variance estimate (a mean of ``||B g||^2`` samples, so ``df = 2 k mean^2 / var``): large where
``||B g||^2`` barely moves between probes, small where a few undeflated eigenvalues dominate.
The count ``m = ceil(rel_var / trace_rel_tol^2)`` (in ``[trace_min_probes, trace_max_probes]``)
is planned from probes that are not in the estimate -- the previous record's ``rel_var`` (the
monitor carries it, and checkpoints it), or a pilot probe for the first record -- so the
estimate's probes are independent of ``m`` and the estimate is unbiased given the Lanczos basis.
(A rule that stops when the running ``stderr <= tol |estimate|`` selects on the estimate's own
error; it was removed: records that stopped early read +0.8 to +1.0 SE off, late ones -0.6 to
-1.0 SE, measured with the benchmark trace_calibration.py, removed here.)
Coverage and bias measured with benchmarks/trace_coverage.py (docs/metrics.md).

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
One forward + one ``create_graph=True`` gradient per record (:class:`SharedGraphHessian`); every
HVP is one double-backward through that retained graph (``retain_graph=True``), shared by the
eigenvalue and the trace (hessian-eigenthings' ``HessianOperator`` rebuilds the graph per
product: 3.24 vs 2.24 training steps per product at width 1.0 on CPU, so it is not used).
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

import scipy.stats
import torch
from hessian_eigenthings import CurvatureOperator, supervised_loss
from torch import Tensor, nn

BNMode = Literal["train", "eval"]
TraceMethod = Literal["auto", "deflated", "hutchinson", "ggn_exact"]
LossFn = Callable[[nn.Module, Any], Tensor]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_EPS = 1e-30
#: Coverage of the logged trace interval ``[trace_lo, trace_hi]``.
TRACE_LEVEL = 0.95


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
    """Trace estimate with its standard error ``stderr`` (Hutchinson: from the Rademacher variance
    bound, module doc), the 95% interval ``[lo, hi]`` with ``df`` degrees of freedom
    (:func:`trace_interval`; ``lo == hi`` and ``df`` inf for an exact trace), ``n_hvp`` products
    (pilot included), ``n_probes`` (probes averaged in the estimate), ``n_pilot`` (probes that only
    planned ``n_probes``; not in the estimate), ``exact_part`` (trace of the deflated subspace,
    exact) and ``converged``: the planned count fit under the cap."""

    estimate: float
    stderr: float
    n_hvp: int
    n_probes: int
    converged: bool
    method: str
    lo: float = math.nan
    hi: float = math.nan
    df: float = math.inf
    exact_part: float = 0.0
    deflation_rank: int = 0
    n_pilot: int = 0

    @property
    def rel_stderr(self) -> float:
        if not math.isfinite(self.stderr):
            return math.inf
        return self.stderr / max(abs(self.estimate), _EPS)

    @property
    def rel_var(self) -> float:
        """One probe's variance over the squared trace, ``n_probes * rel_stderr^2``: what the next
        record plans its probe count from (:func:`plan_trace_probes`)."""
        return self.n_probes * self.rel_stderr**2


def plan_trace_probes(rel_var: float, rel_tol: float, min_probes: int, max_probes: int) -> tuple[int, bool]:
    """Probes ``m`` for a relative standard error of ``rel_tol``: ``ceil(rel_var / rel_tol^2)``,
    clipped to ``[min_probes, max_probes]``, and whether it fit under ``max_probes``.
    ``rel_var`` is one probe's variance over the squared trace, ``v / t^2``, measured by an earlier,
    independent set of probes (the previous record, or a pilot probe): the count must not depend
    on the probes that make the estimate (module doc, "Trace interval")."""
    need = rel_var / rel_tol**2 if rel_tol > 0 and math.isfinite(rel_var) else math.inf
    fits = need <= max_probes
    m = max_probes if not fits else max(min_probes, math.ceil(need - 1e-9))
    return min(m, max_probes), fits


@dataclass(frozen=True)
class TraceInterval:
    """``estimate`` with its standard error ``se``, the ``level`` interval ``[lo, hi]`` and the
    degrees of freedom ``df`` of the variance estimate behind ``se`` (inf: known exactly)."""

    estimate: float
    se: float
    lo: float
    hi: float
    df: float
    level: float = TRACE_LEVEL


def trace_interval(
    values: Sequence[float],
    sq_norms: Sequence[float],
    exact_part: float = 0.0,
    level: float = TRACE_LEVEL,
) -> TraceInterval:
    """Student-t interval for the trace from Rademacher probe values ``g^T B g`` (the estimate is
    ``exact_part`` + their mean) and the ``||B g||^2`` of every probe drawn for the variance
    (the estimate's own and any pilot's).

    ``se = sqrt(2 mean(||B g||^2) / m)``: one probe's variance is ``2 (||B||_F^2 - sum B_ii^2) <=
    2 ||B||_F^2`` and ``||B g||^2`` is unbiased for ``||B||_F^2``. Degrees of freedom of that
    variance estimate (a mean of k samples of ``||B g||^2``), by Satterthwaite:
    ``df = 2 k mean^2 / var`` over those samples (``var`` the sample variance): large when
    ``||B g||^2`` hardly moves between probes (the bulk of the spectrum dominates ``||B||_F``),
    small when a few undeflated eigenvalues dominate it, and then the t quantile widens the
    interval. One sample: ``df = 1``.
    """
    m, k = len(values), len(sq_norms)
    if m < 1 or k < 1:
        raise ValueError("trace_interval needs at least one probe value and one ||B g||^2")
    estimate = exact_part + math.fsum(values) / m
    mean_sq = math.fsum(sq_norms) / k
    se = math.sqrt(2.0 * mean_sq / m)
    if k < 2:
        df = 1.0
    else:
        var_sq = math.fsum((s - mean_sq) ** 2 for s in sq_norms) / (k - 1)
        df = max(1.0, 2.0 * k * mean_sq**2 / var_sq) if var_sq > 0 else math.inf
    half = float(scipy.stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    return TraceInterval(estimate, se, estimate - half, estimate + half, df, level)


def hutchinson_trace(
    operator: CurvatureOperator,
    *,
    basis: Sequence[Tensor] = (),
    exact_part: float = 0.0,
    rel_tol: float = 0.05,
    min_probes: int = 2,
    max_probes: int = 64,
    rel_var_prior: float | None = None,
    seed: int = 0,
    probe_batch: int = 1,
    start_probe: tuple[float, float] | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of ``tr(A)``, optionally deflated by an orthonormal ``basis`` Q, with its
    95% interval (:func:`trace_interval`).

    With ``basis`` given, ``exact_part`` must be ``tr(Q^T A Q)``; probes are projected,
    ``g <- (I - Q Q^T) g``, and the estimate is ``exact_part + mean(g^T A g)`` over Rademacher g.

    Probe count (module doc, "Trace interval"): ``m = ceil(rel_var / rel_tol^2)`` in ``[min_probes,
    max_probes]`` (:func:`plan_trace_probes`), where ``rel_var`` (one probe's variance over the
    squared trace) comes from probes that are not in the estimate: ``rel_var_prior`` (the previous
    record's, as the monitor passes it) or, without one, a pilot probe drawn here and left out of
    the estimate (its ``||B g||^2`` still enters the variance). ``min_probes == max_probes`` fixes
    the count: nothing is planned. Either way the estimate's probes are independent of ``m``.
    ``converged``: the planned count fit under ``max_probes``.

    ``probe_batch > 1`` applies that many probes per call of ``operator.matmat`` (batched HVPs,
    if the operator has it). ``start_probe`` ``(g^T A g, ||A g||^2)`` of a Rademacher probe
    already applied (Lanczos' cold start, see :class:`EigResult`) is a free pilot; only without
    deflation (a projected probe is a different sample).
    """
    if start_probe is not None and len(basis):
        raise ValueError("start_probe is an undeflated sample: it cannot be combined with a basis")
    n, device, dtype = operator.size, operator.device, operator.dtype
    gen = _generator(device if device.type == "cuda" else torch.device("cpu"), seed + 7919)
    qmat = torch.stack(list(basis)) if len(basis) else None
    max_probes = max(1, int(max_probes))
    min_probes = min(max(1, int(min_probes)), max_probes)  # the cap wins
    probe_batch = max(1, int(probe_batch))
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
    pilot_sq: list[float] = []
    if min_probes == max_probes or rel_var_prior is not None:
        m, converged = (
            (max_probes, True)
            if rel_var_prior is None
            else plan_trace_probes(rel_var_prior, rel_tol, min_probes, max_probes)
        )
        values, sq_norms = free  # the count does not depend on it: the free probe is a sample
    else:
        pilot_values, pilot_sq = free if start_probe is not None else draw(1)
        t = exact_part + pilot_values[0]
        rel_var = 2.0 * pilot_sq[0] / t**2 if t != 0 else math.inf
        m, converged = plan_trace_probes(rel_var, rel_tol, min_probes, max_probes)
        values, sq_norms = [], []
    more_values, more_sq = draw(m - len(values))
    values, sq_norms = values + more_values, sq_norms + more_sq
    interval = trace_interval(values, pilot_sq + sq_norms, exact_part)
    return TraceEstimate(
        estimate=interval.estimate,
        stderr=interval.se,
        lo=interval.lo,
        hi=interval.hi,
        df=interval.df,
        n_hvp=n_hvp,
        n_probes=m,
        converged=converged,
        method="deflated" if qmat is not None else "hutchinson",
        exact_part=exact_part,
        deflation_rank=0 if qmat is None else qmat.shape[0],
        n_pilot=len(pilot_sq),
    )


# --------------------------------------------------------------------------------------------
# One curvature record
# --------------------------------------------------------------------------------------------
#: Estimator settings used by CurvatureMonitor unless configured otherwise; chosen by measurement
#: with benchmarks/curvature_overhead.py and benchmarks/trace_coverage.py (docs/metrics.md).
CURVATURE_DEFAULTS: dict[str, Any] = {
    "eig_tol": 1e-2,
    "eig_max_iter": 30,
    "trace_method": "auto",
    "trace_rel_tol": 0.1,
    "trace_min_probes": 2,
    "trace_max_probes": 16,
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
            "trace_se": self.trace.stderr,
            "trace_lo": self.trace.lo,
            "trace_hi": self.trace.hi,
            "trace_df": self.trace.df,
            "trace_probes": self.trace.n_probes,
            "hessian_trace_rel_stderr": self.trace.rel_stderr,
            "hessian_trace_n_hvp": self.trace.n_hvp,
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
    trace_rel_var: float | None = None,
    seed: int = 0,
    probe_batch: int = 1,
) -> CurvatureResult:
    """``lambda_max`` and Hessian trace of ``criterion(model(x), y)`` on one batch.

    ``batch`` must already be on the model's device. The model's parameters, gradients (``.grad``
    is never written: products use ``torch.autograd.grad``), BN running statistics and the global
    RNG are left untouched (probes use private generators seeded with ``seed``). ``v0``: Lanczos
    start (the previous record's top eigenvector). ``trace_rel_var``: the previous record's
    ``trace.rel_var``, which plans this record's probe count (None: a pilot probe plans it; module
    doc, "Trace interval").
    """
    loss_fn = cross_entropy_loss_fn(criterion)
    if trace_method == "auto":
        trace_method = "ggn_exact" if piecewise_linear_in_each_weight(model, bn_mode) else "deflated"
    elif trace_method == "ggn_exact" and not piecewise_linear_in_each_weight(model, bn_mode):
        raise ValueError(
            "trace_method='ggn_exact' is the Hessian trace only for nets that are linear in each "
            "single weight (Conv/Linear/ReLU/avg-pool/residual sums, BN only in eval mode)"
        )
    elif trace_method not in ("deflated", "hutchinson", "ggn_exact"):
        raise ValueError(f"unknown trace_method {trace_method!r}")
    t0 = time.perf_counter()
    with bn_mode_context(model, bn_mode), SharedGraphHessian(model, batch, loss_fn) as op:
        eig = lanczos_top_eig(op, v0=v0, tol=eig_tol, max_iter=eig_max_iter, seed=seed)
        if trace_method != "ggn_exact":
            # deflated: the Lanczos basis's part of the trace is exact, probes estimate the
            # rest; hutchinson: Lanczos' cold Rademacher start is already a (pilot) probe
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
                rel_var_prior=trace_rel_var,
                seed=seed,
                probe_batch=probe_batch,
            )
        n_hvp, loss = op.n_matvec, float(op.loss)
    eig.basis, eig.alphas = [], []  # free the Krylov basis (m x n floats)
    if trace_method == "ggn_exact":
        # diag(H) = diag(GGN) for nets that are linear in each single weight (checked above).
        exact = ggn_trace(model, batch, bn_mode=bn_mode)["ggn_trace"]
        tr = TraceEstimate(
            estimate=exact, stderr=0.0, lo=exact, hi=exact, n_hvp=0, n_probes=0, converged=True, method="ggn_exact"
        )
    return CurvatureResult(
        eig=eig,
        trace=tr,
        loss=loss,
        bn_mode=bn_mode,
        batch_size=int(batch[0].shape[0]),
        n_hvp=int(n_hvp),
        seconds=time.perf_counter() - t0,
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
