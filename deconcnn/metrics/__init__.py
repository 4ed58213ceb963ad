"""Metric math as plain functions (no Lightning): norms, curvature, gradient-noise statistics."""

from deconcnn.metrics.norms import global_grad_norm, global_param_norm

__all__ = ["global_grad_norm", "global_param_norm"]
