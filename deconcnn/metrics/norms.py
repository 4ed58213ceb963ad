"""Global L2 norms of gradients and parameters, computed on device without a host sync.

Both functions return a 0-dim tensor on the parameters' device (float32 or wider); callers that
log many of them should stack them and move them to the host once (see the metrics logger).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _global_norm(tensors: list[Tensor]) -> Tensor:
    if not tensors:
        return torch.zeros(())
    # One fused norm kernel per device/dtype group, then the norm of the norms (= the L2 norm of
    # the concatenation); float32 at least, so half-precision tensors do not overflow the sum.
    detached = [
        t.detach() if t.dtype.is_floating_point and t.dtype.itemsize >= 4 else t.detach().float() for t in tensors
    ]
    return torch.nn.utils.get_total_norm(detached, 2.0)


def global_grad_norm(parameters: Iterable[Tensor]) -> Tensor:
    """Total L2 norm of all existing ``.grad`` tensors (parameters whose grad is None are skipped).

    Returns a 0-dim float32 tensor on the parameters' device; 0.0 if no parameter has a gradient.
    Sparse gradients are not supported (none occur in this project). Call it before gradient
    clipping (e.g. in ``on_before_optimizer_step``) to get the pre-clipping norm.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    return _global_norm(grads)


def global_param_norm(parameters: Iterable[Tensor]) -> Tensor:
    """Total L2 norm of all parameter tensors (0-dim float32 tensor on their device)."""
    return _global_norm([p for p in parameters])
