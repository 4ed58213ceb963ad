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
    # torch._foreach_norm batches the per-tensor norms in one kernel per dtype/device group;
    # the final norm of norms equals the L2 norm of the concatenation.
    device = tensors[0].device
    norms = torch._foreach_norm([t.detach() for t in tensors], 2.0)
    stacked = torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])
    return torch.linalg.vector_norm(stacked, 2.0)


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
