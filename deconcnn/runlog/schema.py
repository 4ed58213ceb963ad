"""Every record kind of metrics.jsonl: its keys, their types and units, and which are required.

The one place a record key is defined. The callbacks write records (they name the keys they
write), and everything that reads or checks the log imports it from here: `check`, `collect`,
`report`, `analyze`, the tests' fabricated sweeps, and a test that holds docs/metrics.md (where each
key is explained at length) to exactly these keys.

A required key is in every record of its kind; its value may still be null, with a reason field
saying why. An optional key appears only when its feature is on (e.g. `ggn_trace`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

FLOAT, INT, STR, BOOL = "float", "int", "str", "bool"


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    unit: str
    required: bool = True


@dataclass(frozen=True)
class RecordKind:
    name: str
    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys if k.required)

    def type_of(self, name: str) -> str:
        return next(k.type for k in (*STAMPS, *self.keys) if k.name == name)


def _keys(*specs: tuple[str, str, str] | tuple[str, str, str, bool]) -> tuple[Key, ...]:
    return tuple(Key(*spec) for spec in specs)


#: The stamp keys, for code that reads them (one name each, imported rather than spelled).
KIND_KEY, STEP_KEY, EPOCH_KEY, EPOCH_FRAC_KEY, TIME_KEY = "kind", "step", "epoch", "epoch_frac", "time"
#: On every record: what it is and when it was made.
STAMPS = _keys(
    (KIND_KEY, STR, "-"),
    (STEP_KEY, INT, "optimizer steps"),
    (EPOCH_KEY, INT, "epochs"),
    (EPOCH_FRAC_KEY, FLOAT, "epochs"),
    (TIME_KEY, FLOAT, "Unix seconds"),
)
STAMP_NAMES = tuple(k.name for k in STAMPS)

TRAIN = RecordKind(
    "train",
    _keys(
        ("loss_train_nats", FLOAT, "nats"),
        ("loss_train_bits", FLOAT, "bits"),
        ("acc_train", FLOAT, "0..1"),
        ("lr", FLOAT, "-"),
        ("wd", FLOAT, "-"),
    ),
)
VAL = RecordKind(
    "val",
    _keys(
        ("loss_val_nats", FLOAT, "nats"),
        ("loss_val_bits", FLOAT, "bits"),
        ("acc_val", FLOAT, "0..1"),
        ("grad_norm", FLOAT, "nats / parameter unit"),
        ("weight_norm", FLOAT, "parameter units"),
    ),
)
CHECKPOINT = RecordKind("checkpoint", _keys(("checkpoint_size_mb", FLOAT, "MiB"), ("path", STR, "-")))
CURVATURE = RecordKind(
    "curvature",
    _keys(
        ("lambda_max", FLOAT, "nats / parameter unit^2"),
        ("lambda_max_method", STR, "-"),
        ("lambda_max_residual", FLOAT, "nats / parameter unit^2"),
        ("lambda_max_rel_residual", FLOAT, "-"),
        ("lambda_max_n_hvp", INT, "count"),
        ("lambda_max_converged", BOOL, "-"),
        ("lambda_max_warm_start", BOOL, "-"),
        ("hessian_trace", FLOAT, "nats / parameter unit^2"),
        ("hessian_trace_method", STR, "-"),
        ("trace_se", FLOAT, "nats / parameter unit^2"),
        ("trace_lo", FLOAT, "nats / parameter unit^2"),
        ("trace_hi", FLOAT, "nats / parameter unit^2"),
        ("trace_df", FLOAT, "-"),
        ("trace_probes", INT, "count"),
        ("hessian_trace_rel_stderr", FLOAT, "-"),
        ("hessian_trace_pilot_probes", INT, "count"),
        ("hessian_trace_n_hvp", INT, "count"),
        ("hessian_trace_converged", BOOL, "-"),
        ("hessian_trace_deflation_rank", INT, "count"),
        ("curv_loss_nats", FLOAT, "nats"),
        ("curv_batch_size", INT, "count"),
        ("curv_n_hvp", INT, "count"),
        ("curv_seconds", FLOAT, "s"),
        ("bn_mode", STR, "-"),
        ("ggn_trace", FLOAT, "nats / parameter unit^2", False),
        ("ggn_trace_stderr", FLOAT, "nats / parameter unit^2", False),
        ("ggn_trace_method", STR, "-", False),
        ("ggn_trace_seconds", FLOAT, "s", False),
        ("ggn_trace_reason", STR, "-", False),
    ),
)
NOISE = RecordKind(
    "noise",
    _keys(
        ("n_losses", INT, "count"),
        ("detrend_slope", FLOAT, "-"),
        ("detrend_intercept", FLOAT, "ln nats"),
        ("resid_power", FLOAT, "(ln-ratio)^2"),
        ("psd_tail", FLOAT, "(ln-ratio)^2"),
        ("psd_total", FLOAT, "(ln-ratio)^2"),
        ("psd_tail_ratio", FLOAT, "-"),
        ("psd_band_lo", FLOAT, "cycles/batch"),
        ("psd_band_hi", FLOAT, "cycles/batch"),
        ("psd_nperseg", INT, "count"),
        ("grad_var", FLOAT, "(nats / parameter unit)^2"),
        ("grad_trace_cov", FLOAT, "(nats / parameter unit)^2"),
        ("grad_mean_sq_norm", FLOAT, "(nats / parameter unit)^2"),
        ("noise_scale", FLOAT, "samples"),
        ("noise_scale_biased", FLOAT, "samples"),
        ("grad_batch_size", INT, "count"),
        ("grad_noise_method", STR, "-"),
        ("grad_bn_mode", STR, "-"),
        ("noise_seconds", FLOAT, "s"),
        ("reason", STR, "-"),
    ),
)

KINDS: dict[str, RecordKind] = {k.name: k for k in (TRAIN, VAL, CHECKPOINT, CURVATURE, NOISE)}
#: The values the experiment studies: what check requires, the report plots, analyze correlates.
NOISE_METRICS = ("psd_tail", "resid_power", "grad_var", "noise_scale")
CURVATURE_METRICS = ("lambda_max", "hessian_trace")


def is_number(value: Any) -> TypeGuard[float]:
    """A record's number (JSON has no bool/int distinction Python keeps: True is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> TypeGuard[float]:
    return is_number(value) and math.isfinite(value)


def problems(record: dict[str, object]) -> list[str]:
    """What is wrong with one record: unknown kind, missing stamps or required keys, unknown keys."""
    kind = KINDS.get(str(record.get(KIND_KEY)))
    if kind is None:
        return [f"unknown kind {record.get(KIND_KEY)!r}"]
    out = [f"no {k}" for k in (*STAMP_NAMES, *kind.required) if k not in record]
    unknown = set(record) - set(STAMP_NAMES) - set(kind.names)
    if unknown:
        out.append(f"keys not in the {kind.name} schema: {sorted(unknown)}")
    return out
