"""deconcnn-sweep check: the pre-launch checklist, verified on a real short run of every variant.

For each variant, the sweep's first run of that variant (as `grid.plan` expands it) is run again
with the same callbacks and schedules, shrunk only where time goes: `debug=check` (synthetic data,
4 epochs of 8 steps of 8 samples: the noise monitor, every 2 epochs, fires twice), the curvature
period scaled so it fires CHECK_CURVATURE_FIRINGS times, the curvature and gradient-noise batches
shrunk, and -- without a GPU -- the width capped at CPU_MAX_WIDTH (the check verifies logging, not
the model). Every shrink is listed in the output and in check.json.

Its metrics.jsonl is then checked against the log itself, item by item (ITEMS), by plain functions
over a list of records and the `Schedule` the run's config implies (`check_per_batch`, ...), so
tests can feed them fabricated logs. The schedule is the variant's own config: where it departs
from the experiment's (validation every 0.25 epoch, curvature every 500 steps, noise every 2
epochs: DEFAULT_*), the item says so as a deliberate change, and still checks the log against it.

The result goes to `<out>/<sweep>/check.json`; `launch` reads it (launch.require_check) before it
spends SLURM time. The check's own runs live in `<out>/<sweep>/check/<variant>/`, never in runs/.
No torch import: training runs as `deconcnn-train` subprocesses (locally or as a SLURM array).

This module holds the rules (plain functions over records); runner.py runs the check runs through
the sweep's executor, render.py prints the checklist.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog import schema
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import PROBE_FILE
from deconcnn.runlog.metrics_log import METRICS_FILE
from deconcnn.runlog.metrics_reader import MetricsReader
from deconcnn.runlog.run_status import RUN_LOG, read_run_status

# ---------------------------------------------------------------- the experiment's schedule

#: What the loss_lin_slope experiment logs (its spec): the defaults a variant may deliberately change.
DEFAULT_VAL_CHECK_INTERVAL = 0.25
DEFAULT_CURVATURE_EVERY = 500
DEFAULT_NOISE_EVERY_EPOCHS = 2
PER_BATCH_KEYS = schema.TRAIN.required
VAL_KEYS = schema.VAL.required
STAMP_KEYS = tuple(k for k in schema.STAMP_NAMES if k != schema.KIND_KEY)
#: Each curvature value with the fields that say how good it is (error, then iteration count).
CURVATURE_FIELDS = {
    "lambda_max": ("lambda_max_residual", "lambda_max_n_hvp"),
    "hessian_trace": ("trace_se", "trace_probes"),
}
#: The values whose producer (estimator/library) a record must name, in `<value>_method`.
ESTIMATED_VALUES = ("lambda_max", "hessian_trace", "ggn_trace")
#: Estimator labels that mean BackPACK computed the value (deconcnn.metrics.curvature).
BACKPACK_LABELS = ("ggn_exact", "backpack_diag_ggn_exact")
NOISE_KEYS = schema.NOISE_METRICS
MEGABYTE = 1024 * 1024

# ---------------------------------------------------------------- the check runs' shrink

CHECK_DEBUG = "check"  # conf/debug/check.yaml: 4 epochs of 8 steps of 8 samples
CHECK_CURVATURE_FIRINGS = 2  # curvature period = total steps / this
CHECK_CURVATURE_BATCH = 8  # curvature and per-sample-gradient batches (cost, not schedule)
#: Width cap without a GPU. Measured on 2 CPU cores (other jobs running): one curvature HVP on 8
#: samples takes ~1.1 s at width 0.125, ~2.4 s at 0.25; width 1.0 did not finish its first
#: curvature record in 5 minutes.
CPU_MAX_WIDTH = 0.125
CURVATURE = "curvature_monitor"
NOISE = "noise_monitor"

ITEMS = {
    "run": "check run finished, log readable",
    "per_batch": "per-batch logger: every step once, all keys",
    "validation": "validation on its schedule, all keys",
    "curvature": "curvature monitor: on its period, finite values + errors",
    "curvature_estimators": "curvature: estimator/library named per value (BackPACK)",
    "noise": "noise monitor on its schedule, values or reasons",
    "stamps": "every record: step/epoch/epoch_frac/time",
    "checkpoints": "checkpoint sizes = files on disk",
    "resources": "resources decided (probe.json or --workers-per-gpu)",
}


class CheckError(SweepError):
    """The check could not be carried out (not: a check item failed)."""


@dataclass(frozen=True)
class ItemResult:
    passed: bool
    detail: str
    change: str | None = None  # how the variant's config deliberately departs from the experiment's default

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "detail": self.detail, "change": self.change}


def ok(detail: str, change: str | None = None) -> ItemResult:
    return ItemResult(True, detail, change)


def fail(detail: str) -> ItemResult:
    return ItemResult(False, detail)


@dataclass(frozen=True)
class Schedule:
    """What a run's config says its log must contain."""

    steps_per_epoch: int
    epochs: int
    val_check_interval: Any  # the config's trainer.val_check_interval
    curvature_every: int | None  # None: no curvature monitor in the config
    noise_every_epochs: int | None  # None: no noise monitor in the config

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def from_config(cls, cfg: Any) -> Schedule:
        """From a composed run config on CifarDataModule (train samples = num_samples - val_size)."""
        data = cfg.data
        train = int(data.source.num_samples) - int(data.val_size)
        callbacks = cfg.get("callbacks") or {}
        curvature, noise = callbacks.get(CURVATURE), callbacks.get(NOISE)
        return cls(
            steps_per_epoch=-(-train // int(data.batch_size)),
            epochs=int(cfg.trainer.max_epochs),
            val_check_interval=cfg.trainer.get("val_check_interval"),
            curvature_every=int(curvature.compute_every_n_steps) if curvature is not None else None,
            noise_every_epochs=int(noise.log_every_n_epochs) if noise is not None else None,
        )


# ---------------------------------------------------------------- the checks: records -> ItemResult


def _kind(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get(schema.KIND_KEY) == kind]


def _ranges(values: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (first 6 runs)."""
    runs: list[tuple[int, int]] = []  # (first, last) of each run of consecutive values
    for v in sorted(set(values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    parts = [str(first) if first == last else f"{first}-{last}" for first, last in runs]
    return ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")


def _fracs(values: Iterable[float]) -> str:
    values = list(values)
    text = ", ".join(f"{v:g}" for v in values[:8])
    return text + (", ..." if len(values) > 8 else "")


def check_per_batch(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Every optimizer step 0..N-1 has exactly one `train` record with every per-batch key finite."""
    train = _kind(records, "train")
    n = schedule.total_steps
    counts = Counter(r.get(schema.STEP_KEY) for r in train)
    missing = [s for s in range(n) if counts[s] == 0]
    duplicated = sorted(s for s, c in counts.items() if isinstance(s, int) and c > 1)
    # Steps that are not integers (absent, null, strings) do not sort with the integers: listed after them.
    extra: list[Any] = sorted(s for s in counts if isinstance(s, int) and not 0 <= s < n)
    extra += [s for s in counts if not isinstance(s, int)]
    problems = []
    if missing:
        problems.append(f"steps missing: {_ranges(missing)}")
    if duplicated:
        problems.append(f"steps logged more than once: {_ranges(duplicated)}")
    if extra:
        problems.append(f"steps outside 0..{n - 1}: {extra[:5]}")
    bad_keys: Counter[str] = Counter()
    for r in train:
        for key in PER_BATCH_KEYS:
            if not schema.is_finite(r.get(key)):
                bad_keys[key] += 1
        if (
            schema.is_finite(r.get("loss_train_nats"))
            and schema.is_finite(r.get("loss_train_bits"))
            and not math.isclose(r["loss_train_bits"], r["loss_train_nats"] / math.log(2), rel_tol=1e-6, abs_tol=1e-9)
        ):
            bad_keys["loss_train_bits != nats/ln2"] += 1
        step = r.get(schema.STEP_KEY)
        if (
            isinstance(step, int)
            and schema.is_number(r.get(schema.EPOCH_FRAC_KEY))
            and not math.isclose(r[schema.EPOCH_FRAC_KEY], (step + 1) / schedule.steps_per_epoch, abs_tol=1e-9)
        ):
            bad_keys["epoch_frac != (step+1)/steps_per_epoch"] += 1
    if bad_keys:
        problems.append("bad or absent: " + ", ".join(f"{k} ({c} records)" for k, c in bad_keys.items()))
    if problems:
        return fail("; ".join(problems))
    return ok(f"steps 0..{n - 1} once each, all {len(PER_BATCH_KEYS)} keys finite")


def check_validation(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Validation records exactly where the config's trainer.val_check_interval (a fraction of an
    epoch that divides it) puts them; a change from the experiment's 0.25 is said, not failed."""
    interval = schedule.val_check_interval
    if not (
        schema.is_number(interval)
        and not isinstance(interval, int)
        and 0 < interval <= 1
        and math.isclose(1 / interval, round(1 / interval))
    ):
        return fail(
            f"trainer.val_check_interval={interval}: the check needs a fraction of an epoch that "
            "divides it (0.25, 0.5, 1.0, ...)"
        )
    change = (
        None
        if math.isclose(interval, DEFAULT_VAL_CHECK_INTERVAL)
        else f"trainer.val_check_interval={interval:g} (the experiment's: {DEFAULT_VAL_CHECK_INTERVAL:g})"
    )
    per_epoch = round(1 / interval)
    expected = [k / per_epoch for k in range(1, schedule.epochs * per_epoch + 1)]
    val = _kind(records, "val")
    got = [r.get(schema.EPOCH_FRAC_KEY) for r in val]
    if len(got) != len(expected) or not all(
        schema.is_number(g) and math.isclose(g, e, abs_tol=1e-9) for g, e in zip(got, expected)
    ):
        return fail(
            f"val records at epoch_frac {_fracs(v for v in got if schema.is_number(v))} "
            f"({len(got)} records), expected {_fracs(expected)} ({len(expected)})"
        )
    problems = []
    for r in val:
        missing = [k for k in VAL_KEYS if not schema.is_finite(r.get(k))]
        if missing:
            problems.append(f"epoch_frac {r['epoch_frac']:g}: {', '.join(missing)} absent or not finite")
        elif r["grad_norm"] <= 0:
            problems.append(f"epoch_frac {r['epoch_frac']:g}: grad_norm {r['grad_norm']} (read after zero_grad?)")
        step = r.get(schema.STEP_KEY)
        if step != round(r[schema.EPOCH_FRAC_KEY] * schedule.steps_per_epoch):
            problems.append(f"epoch_frac {r['epoch_frac']:g} stamped step {step}")
    if problems:
        return fail("; ".join(problems[:3]))
    return ok(
        f"{len(val)} records at epoch_frac {_fracs(expected[:3])}, ..., {expected[-1]:g}; "
        f"all {len(VAL_KEYS)} keys finite, grad_norm > 0",
        change,
    )


def check_curvature(
    records: Sequence[dict[str, Any]], schedule: Schedule, configured_every: int | None = None
) -> ItemResult:
    """Curvature records exactly at steps 0, n, 2n, ... < N, each with finite values and errors."""
    if schedule.curvature_every is None:
        return (
            ok(
                "no curvature records expected",
                f"callbacks.{CURVATURE} is off (the experiment's: every {DEFAULT_CURVATURE_EVERY} steps)",
            )
            if not _kind(records, "curvature")
            else fail(f"callbacks.{CURVATURE} is off, yet the log has curvature records")
        )
    change = (
        None
        if configured_every in (None, DEFAULT_CURVATURE_EVERY)
        else f"callbacks.{CURVATURE}.compute_every_n_steps={configured_every} (the experiment's: "
        f"{DEFAULT_CURVATURE_EVERY})"
    )
    every = schedule.curvature_every
    expected = list(range(0, schedule.total_steps, every))
    curv = _kind(records, "curvature")
    got = [r.get(schema.STEP_KEY) for r in curv]
    scaled = f"every {every} steps" + (f" (configured {configured_every})" if configured_every else "")
    if len(expected) < 2:
        return fail(f"{scaled}: fires {len(expected)} time(s) in {schedule.total_steps} steps, need >= 2")
    if got != expected:
        return fail(f"{scaled}: records at steps {got}, expected {expected}")
    problems = []
    for r in curv:
        for value, errors in CURVATURE_FIELDS.items():
            absent = [k for k in (value, errors[0]) if not schema.is_finite(r.get(k))]
            absent += [k for k in errors[1:] if not schema.is_number(r.get(k))]
            if absent:
                problems.append(f"step {r['step']}: {', '.join(absent)} absent or not finite")
    if problems:
        return fail("; ".join(problems[:3]))
    return ok(
        f"{scaled}: steps {expected}; {', '.join(CURVATURE_FIELDS)} finite with "
        f"{', '.join(e[0] for e in CURVATURE_FIELDS.values())}",
        change,
    )


def _producer(record: dict[str, Any], value: str) -> str | None:
    label = record.get(f"{value}_method")
    return str(label) if label else None


def check_curvature_estimators(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Each curvature value names what produced it (`<value>_method`), BackPACK included.

    BackPACK does not give the Hessian of a BN network in train mode (nor lambda_max at all), so
    "uses BackPACK" holds only for some values of some variants; what the check can verify is that
    every record says, value by value, which estimator/library produced it. The detail says where
    BackPACK was used."""
    if schedule.curvature_every is None:
        return ok("no curvature values to name", f"callbacks.{CURVATURE} is off")
    curv = _kind(records, "curvature")
    if not curv:
        return fail("no curvature records")
    labels: dict[str, Counter[str]] = {}
    unlabelled: Counter[str] = Counter()
    for r in curv:
        for value in ESTIMATED_VALUES:
            if value not in r:
                continue
            if r[value] is None:
                if not r.get(f"{value}_reason"):
                    unlabelled[f"{value} (null, no {value}_reason)"] += 1
                continue
            label = _producer(r, value)
            if label is None:
                unlabelled[f"{value} (no {value}_method)"] += 1
            else:
                labels.setdefault(value, Counter())[label] += 1
    described = "; ".join(
        f"{value}: {', '.join(f'{lab} (BackPACK)' if lab in BACKPACK_LABELS else lab for lab in c)}"
        for value, c in labels.items()
    )
    backpack = sorted(v for v, c in labels.items() if any(lab in BACKPACK_LABELS for lab in c))
    where = f"BackPACK used for {', '.join(backpack)}" if backpack else "BackPACK not used"
    if unlabelled:
        return fail(
            "producer not recorded: "
            + ", ".join(f"{k} in {c} records" for k, c in unlabelled.items())
            + (f"; recorded: {described}" if described else "")
        )
    return ok(f"{described}; {where}")


def check_noise(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Noise records exactly after epochs 2, 4, ... with each value finite or a reason given."""
    if schedule.noise_every_epochs is None:
        return (
            ok(
                "no noise records expected",
                f"callbacks.{NOISE} is off (the experiment's: every {DEFAULT_NOISE_EVERY_EPOCHS} epochs)",
            )
            if not _kind(records, "noise")
            else fail(f"callbacks.{NOISE} is off, yet the log has noise records")
        )
    every, spe = schedule.noise_every_epochs, schedule.steps_per_epoch
    change = (
        None
        if every == DEFAULT_NOISE_EVERY_EPOCHS
        else f"callbacks.{NOISE}.log_every_n_epochs={every} (the experiment's: {DEFAULT_NOISE_EVERY_EPOCHS})"
    )
    expected = [e for e in range(1, schedule.epochs + 1) if e % every == 0]
    if not expected:
        return fail(f"every {every} epochs: never fires in the check's {schedule.epochs} epochs")
    noise = _kind(records, "noise")
    got = [r.get(schema.STEP_KEY) for r in noise]
    if got != [e * spe for e in expected] or not all(
        schema.is_number(frac := r.get(schema.EPOCH_FRAC_KEY)) and math.isclose(frac, e)
        for r, e in zip(noise, expected)
    ):
        after = [f"{r.get('epoch_frac')}" for r in noise]
        return fail(
            f"noise records after epochs {after} (steps {got}), expected after epochs {expected} "
            f"(steps {[e * spe for e in expected]})"
        )
    problems, reasons = [], set()
    for r in noise:
        for key in NOISE_KEYS:
            if schema.is_finite(r.get(key)):
                continue
            if key in r and r.get("reason"):
                reasons.add(str(r["reason"]))
            else:
                problems.append(
                    f"epoch {r['epoch_frac']:g}: {key} " + ("not finite, no reason" if key in r else "absent")
                )
    if problems:
        return fail("; ".join(problems[:3]))
    why = f"; null with reason: {'; '.join(sorted(reasons))}" if reasons else ""
    methods = sorted({str(r["grad_noise_method"]) for r in noise if r.get("grad_noise_method")})
    by = f"; grad_var by {', '.join(methods)}" if methods else ""
    return ok(
        f"after epochs {expected}; {', '.join(NOISE_KEYS)} finite{' or explained' if reasons else ''}{why}{by}", change
    )


def check_stamps(records: Sequence[dict[str, Any]]) -> ItemResult:
    """Every record carries step, epoch, epoch_frac and time; epoch <= epoch_frac <= epoch + 1."""
    if not records:
        return fail("no records")
    problems: Counter[str] = Counter()
    last_time = -math.inf
    for r in records:
        kind = r.get(schema.KIND_KEY, "?")
        step, epoch, frac, t = (r.get(k) for k in STAMP_KEYS)
        absent = [k for k in STAMP_KEYS if k not in r or r[k] is None]
        if absent:
            problems[f"{kind}: no {'/'.join(absent)}"] += 1
            continue
        if not (isinstance(step, int) and step >= 0 and isinstance(epoch, int) and epoch >= 0):
            problems[f"{kind}: step/epoch not a non-negative integer"] += 1
        if not (schema.is_finite(frac) and schema.is_finite(t)):
            problems[f"{kind}: epoch_frac/time not a finite number"] += 1
        elif isinstance(epoch, int) and not epoch <= frac <= epoch + 1:
            problems[f"{kind}: epoch_frac {frac:g} outside epoch {epoch}"] += 1
        elif t < last_time:
            problems[f"{kind}: time goes backwards"] += 1
        if schema.is_finite(t):
            last_time = max(last_time, t)
    if problems:
        return fail("; ".join(f"{k} ({c} records)" for k, c in problems.most_common(3)))
    return ok(f"all {len(records)} records")


def check_checkpoints(records: Sequence[dict[str, Any]], run_dir: Path) -> ItemResult:
    """The last checkpoint record of each path equals that file's size on disk, for files still
    there (top-k files get deleted); every checkpoint file on disk has a record."""
    ckpt = _kind(records, "checkpoint")
    if not ckpt:
        return fail("no checkpoint records")
    last: dict[str, dict[str, Any]] = {}
    for r in ckpt:
        last[str(r.get("path"))] = r
    problems = []
    present = 0
    for rel, r in last.items():
        path = run_dir / rel
        if not path.is_file():
            continue
        present += 1
        size = r.get("checkpoint_size_mb")
        on_disk = path.stat().st_size
        if not schema.is_finite(size) or abs(size * MEGABYTE - on_disk) > 0.5:
            problems.append(f"{rel}: logged {size} MB, file {on_disk / MEGABYTE:.6f} MB")
    run_dir_ckpts = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.ckpt")}
    unlogged = sorted(run_dir_ckpts - set(last))
    if unlogged:
        problems.append(f"files with no checkpoint record: {', '.join(unlogged[:3])}")
    if not present:
        problems.append("none of the logged checkpoint files is on disk")
    if problems:
        return fail("; ".join(problems[:3]))
    return ok(f"{len(ckpt)} records; {present} files on disk match their last record")


def check_run(run_dir: Path) -> tuple[ItemResult, list[dict[str, Any]]]:
    """run.json says completed and metrics.jsonl parses; returns the records too."""
    reader = MetricsReader(run_dir / METRICS_FILE)
    records = list(reader.records())
    status = read_run_status(run_dir)
    problems = []
    if status is None or status.status != "completed":
        error = (status.error if status else None) or f"see {run_dir / RUN_LOG}"
        problems.append(f"run {status.status if status else 'did not start'}: {error}")
    if reader.bad_lines:
        problems.append(f"{reader.bad_lines} unreadable lines in metrics.jsonl")
    if not records:
        problems.append("metrics.jsonl is empty or absent")
    if problems:
        return fail("; ".join(problems)), records
    return ok(f"completed, {len(records)} records"), records


def check_resources(
    sweep_dir: Path, variants: Sequence[str], workers_per_gpu: int | None, packs: bool = True
) -> dict[str, ItemResult]:
    """Workers per GPU decided: the user's --workers-per-gpu, else a probe.json that has a choice
    for every variant of the sweep. Only where it decides something (`packs`: runs on GPUs, or any
    SLURM submission); elsewhere every run has its own CPU slot and the item does not apply."""
    if not packs:
        return dict.fromkeys(variants, ok("not applicable: no GPU here, runs are not packed"))
    if workers_per_gpu is not None:
        if workers_per_gpu < 1:
            return dict.fromkeys(variants, fail(f"--workers-per-gpu {workers_per_gpu} (must be >= 1)"))
        return dict.fromkeys(variants, ok(f"--workers-per-gpu {workers_per_gpu} (the user's choice)"))
    from deconcnn.sweep.probe import ProbeFileError, read_probe_choice

    path = sweep_dir / PROBE_FILE
    if not path.is_file():
        return dict.fromkeys(
            variants, fail(f"no {path}: run `deconcnn-sweep probe-resources` or pass --workers-per-gpu")
        )
    results = {}
    for variant in variants:
        try:
            k = read_probe_choice(path, [variant])[variant]
        except ProbeFileError as error:
            results[variant] = fail(str(error))
        else:
            results[variant] = ok(f"{k} per GPU ({PROBE_FILE})")
    return results


def check_log(
    records: Sequence[dict[str, Any]], schedule: Schedule, run_dir: Path, configured_curvature_every: int | None = None
) -> dict[str, ItemResult]:
    """Every log item of one run (all but `run` and `resources`)."""
    return {
        "per_batch": check_per_batch(records, schedule),
        "validation": check_validation(records, schedule),
        "curvature": check_curvature(records, schedule, configured_curvature_every),
        "curvature_estimators": check_curvature_estimators(records, schedule),
        "noise": check_noise(records, schedule),
        "stamps": check_stamps(records),
        "checkpoints": check_checkpoints(records, run_dir),
    }
