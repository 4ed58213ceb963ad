"""deconcnn-sweep check: the pre-launch checklist, verified on a real short run of every variant.

For each variant, the sweep's first run of that variant (as `launch.plan` expands it) is run again
with the same callbacks and schedules, shrunk only where time goes: synthetic data with
CHECK_STEPS_PER_EPOCH steps of CHECK_BATCH samples, CHECK_EPOCHS epochs (the noise monitor fires
twice), the curvature period scaled so it fires CHECK_CURVATURE_FIRINGS times, the curvature and
gradient-noise batches shrunk, and -- without a GPU -- the width capped at CPU_MAX_WIDTH (the check
verifies logging, not the model). Every shrink is listed in the output and in check.json.

Its metrics.jsonl is then checked against the log itself, item by item (ITEMS), by plain functions
over a list of records and the `Schedule` the run's config implies (`check_per_batch`, ...), so
tests can feed them fabricated logs. The requirements (validation every 0.25 epoch, noise every 2
epochs) are constants here, not read from the config: a variant whose config departs from them
fails the item, naming the config key.

The result goes to `<out>/<sweep>/check.json`; `launch` reads it (launch.require_check) before it
spends SLURM time. The check's own runs live in `<out>/<sweep>/check/<variant>/`, never in runs/.
No torch import: training runs as `deconcnn-train` subprocesses (locally or as a SLURM array).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconcnn.runlog.metrics_reader import MetricsReader
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.run_status import RUN_LOG, read_run_status

if TYPE_CHECKING:  # executors imports submitit; the CLI imports this module for CheckError
    from deconcnn.sweep.executors import RunTask

# ---------------------------------------------------------------- requirements (shared/README.md 3)

REQUIRED_VAL_CHECK_INTERVAL = 0.25
REQUIRED_NOISE_EVERY_EPOCHS = 2
PER_BATCH_KEYS = ("loss_train_nats", "loss_train_bits", "acc_train", "lr", "wd")
VAL_KEYS = ("loss_val_nats", "loss_val_bits", "acc_val", "grad_norm", "weight_norm")
STAMP_KEYS = ("step", "epoch", "epoch_frac", "time")
#: Each curvature value with the fields that say how good it is (error, then iteration count).
CURVATURE_FIELDS = {
    "lambda_max": ("lambda_max_residual", "lambda_max_n_hvp"),
    "hessian_trace": ("hessian_trace_stderr", "hessian_trace_n_probes"),
}
#: The values whose producer (estimator/library) a record must name, in `<value>_method`.
ESTIMATED_VALUES = ("lambda_max", "hessian_trace", "ggn_trace")
#: Estimator labels that mean BackPACK computed the value (deconcnn.metrics.curvature).
BACKPACK_LABELS = ("ggn_exact", "backpack_diag_ggn_exact")
NOISE_KEYS = ("psd_tail", "resid_power", "grad_var", "noise_scale")
MEGABYTE = 1024 * 1024

# ---------------------------------------------------------------- the check runs' shrink

CHECK_DIR = "check"
CHECK_BATCH = 8
CHECK_STEPS_PER_EPOCH = 8          # a multiple of 4, so every 0.25 epoch falls on a batch
CHECK_VAL_SIZE = 16
CHECK_EPOCHS = 4                   # the noise monitor (every 2 epochs) fires twice
CHECK_CURVATURE_FIRINGS = 2        # curvature period = total steps / this
CHECK_CURVATURE_BATCH = 8          # curvature and per-sample-gradient batches (cost, not schedule)
#: Width cap without a GPU. Measured on 2 CPU cores (other jobs running): one curvature HVP on 8
#: samples takes ~1.1 s at width 0.125, ~2.4 s at 0.25; width 1.0 did not finish its first
#: curvature record in 5 minutes.
CPU_MAX_WIDTH = 0.125
CURVATURE = "curvature_monitor"
NOISE = "noise_monitor"

ITEMS = {
    "run": "check run finished, log readable",
    "per_batch": "per-batch logger: every step once, all keys",
    "validation": f"validation every {REQUIRED_VAL_CHECK_INTERVAL} epoch",
    "curvature": "curvature monitor: on its period, finite values + errors",
    "curvature_estimators": "curvature: estimator/library named per value (BackPACK)",
    "noise": f"noise monitor every {REQUIRED_NOISE_EVERY_EPOCHS} epochs",
    "stamps": "every record: step/epoch/epoch_frac/time",
    "checkpoints": "checkpoint sizes = files on disk",
    "resources": "resources decided (probe.json or --workers-per-gpu)",
}


class CheckError(RuntimeError):
    """The check could not be carried out (not: a check item failed)."""


@dataclass(frozen=True)
class ItemResult:
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "detail": self.detail}


def ok(detail: str) -> ItemResult:
    return ItemResult(True, detail)


def fail(detail: str) -> ItemResult:
    return ItemResult(False, detail)


@dataclass(frozen=True)
class Schedule:
    """What a run's config says its log must contain."""

    steps_per_epoch: int
    epochs: int
    val_check_interval: Any                  # the config's trainer.val_check_interval
    curvature_every: int | None              # None: no curvature monitor in the config
    noise_every_epochs: int | None           # None: no noise monitor in the config

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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _kind(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == kind]


def _ranges(values: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (first 6 runs)."""
    values = sorted(set(values))
    parts: list[str] = []
    start = prev = None
    for v in [*values, None]:
        if start is not None and (v is None or v != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")


def _fracs(values: Iterable[float]) -> str:
    values = list(values)
    text = ", ".join(f"{v:g}" for v in values[:8])
    return text + (", ..." if len(values) > 8 else "")


def check_per_batch(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Every optimizer step 0..N-1 has exactly one `train` record with every per-batch key finite."""
    train = _kind(records, "train")
    n = schedule.total_steps
    counts = Counter(r.get("step") for r in train)
    missing = [s for s in range(n) if counts[s] == 0]
    duplicated = sorted(s for s, c in counts.items() if isinstance(s, int) and c > 1)
    extra = sorted(s for s in counts if not isinstance(s, int) or not 0 <= s < n)
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
            if not _finite(r.get(key)):
                bad_keys[key] += 1
        if _finite(r.get("loss_train_nats")) and _finite(r.get("loss_train_bits")) and not math.isclose(
                r["loss_train_bits"], r["loss_train_nats"] / math.log(2), rel_tol=1e-6, abs_tol=1e-9):
            bad_keys["loss_train_bits != nats/ln2"] += 1
        step = r.get("step")
        if isinstance(step, int) and _number(r.get("epoch_frac")) and not math.isclose(
                r["epoch_frac"], (step + 1) / schedule.steps_per_epoch, abs_tol=1e-9):
            bad_keys["epoch_frac != (step+1)/steps_per_epoch"] += 1
    if bad_keys:
        problems.append("bad or absent: " + ", ".join(f"{k} ({c} records)" for k, c in bad_keys.items()))
    if problems:
        return fail("; ".join(problems))
    return ok(f"steps 0..{n - 1} once each, all {len(PER_BATCH_KEYS)} keys finite")


def check_validation(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Validation records at epoch_frac 0.25, 0.5, ... exactly, and a config that asks for that."""
    interval = schedule.val_check_interval
    if not (_number(interval) and not isinstance(interval, int)
            and math.isclose(interval, REQUIRED_VAL_CHECK_INTERVAL)):
        return fail(f"this variant's config sets trainer.val_check_interval={interval} "
                    f"(required {REQUIRED_VAL_CHECK_INTERVAL})")
    per_epoch = round(1 / REQUIRED_VAL_CHECK_INTERVAL)
    expected = [k / per_epoch for k in range(1, schedule.epochs * per_epoch + 1)]
    val = _kind(records, "val")
    got = [r.get("epoch_frac") for r in val]
    if len(got) != len(expected) or not all(
            _number(g) and math.isclose(g, e, abs_tol=1e-9) for g, e in zip(got, expected)):
        return fail(f"val records at epoch_frac {_fracs(v for v in got if _number(v))} "
                    f"({len(got)} records), expected {_fracs(expected)} ({len(expected)})")
    problems = []
    for r in val:
        missing = [k for k in VAL_KEYS if not _finite(r.get(k))]
        if missing:
            problems.append(f"epoch_frac {r['epoch_frac']:g}: {', '.join(missing)} absent or not finite")
        elif r["grad_norm"] <= 0:
            problems.append(f"epoch_frac {r['epoch_frac']:g}: grad_norm {r['grad_norm']} (read after zero_grad?)")
        step = r.get("step")
        if step != round(r["epoch_frac"] * schedule.steps_per_epoch):
            problems.append(f"epoch_frac {r['epoch_frac']:g} stamped step {step}")
    if problems:
        return fail("; ".join(problems[:3]))
    return ok(f"{len(val)} records at epoch_frac {_fracs(expected[:3])}, ..., {expected[-1]:g}; "
              f"all {len(VAL_KEYS)} keys finite, grad_norm > 0")


def check_curvature(records: Sequence[dict[str, Any]], schedule: Schedule,
                    configured_every: int | None = None) -> ItemResult:
    """Curvature records exactly at steps 0, n, 2n, ... < N, each with finite values and errors."""
    if schedule.curvature_every is None:
        return fail(f"callbacks.{CURVATURE} is not in this variant's config (turned off?)")
    every = schedule.curvature_every
    expected = list(range(0, schedule.total_steps, every))
    curv = _kind(records, "curvature")
    got = [r.get("step") for r in curv]
    scaled = f"every {every} steps" + (f" (configured {configured_every})" if configured_every else "")
    if len(expected) < 2:
        return fail(f"{scaled}: fires {len(expected)} time(s) in {schedule.total_steps} steps, need >= 2")
    if got != expected:
        return fail(f"{scaled}: records at steps {got}, expected {expected}")
    problems = []
    for r in curv:
        for value, errors in CURVATURE_FIELDS.items():
            absent = [k for k in (value, errors[0]) if not _finite(r.get(k))]
            absent += [k for k in errors[1:] if not _number(r.get(k))]
            if absent:
                problems.append(f"step {r['step']}: {', '.join(absent)} absent or not finite")
    if problems:
        return fail("; ".join(problems[:3]))
    return ok(f"{scaled}: steps {expected}; {', '.join(CURVATURE_FIELDS)} finite with "
              f"{', '.join(e[0] for e in CURVATURE_FIELDS.values())}")


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
        return fail(f"callbacks.{CURVATURE} is not in this variant's config")
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
        for value, c in labels.items())
    backpack = sorted(v for v, c in labels.items() if any(lab in BACKPACK_LABELS for lab in c))
    where = f"BackPACK used for {', '.join(backpack)}" if backpack else "BackPACK not used"
    if unlabelled:
        return fail("producer not recorded: " + ", ".join(f"{k} in {c} records" for k, c in unlabelled.items())
                    + (f"; recorded: {described}" if described else ""))
    return ok(f"{described}; {where}")


def check_noise(records: Sequence[dict[str, Any]], schedule: Schedule) -> ItemResult:
    """Noise records exactly after epochs 2, 4, ... with each value finite or a reason given."""
    if schedule.noise_every_epochs is None:
        return fail(f"callbacks.{NOISE} is not in this variant's config (turned off?)")
    if schedule.noise_every_epochs != REQUIRED_NOISE_EVERY_EPOCHS:
        return fail(f"this variant's config sets callbacks.{NOISE}.log_every_n_epochs="
                    f"{schedule.noise_every_epochs} (required {REQUIRED_NOISE_EVERY_EPOCHS})")
    every, spe = REQUIRED_NOISE_EVERY_EPOCHS, schedule.steps_per_epoch
    expected = [e for e in range(1, schedule.epochs + 1) if e % every == 0]
    noise = _kind(records, "noise")
    got = [r.get("step") for r in noise]
    if got != [e * spe for e in expected] or not all(
            _number(r.get("epoch_frac")) and math.isclose(r["epoch_frac"], e) for r, e in zip(noise, expected)):
        after = [f"{r.get('epoch_frac')}" for r in noise]
        return fail(f"noise records after epochs {after} (steps {got}), expected after epochs {expected} "
                    f"(steps {[e * spe for e in expected]})")
    problems, reasons = [], set()
    for r in noise:
        for key in NOISE_KEYS:
            if _finite(r.get(key)):
                continue
            if key in r and r.get("reason"):
                reasons.add(str(r["reason"]))
            else:
                problems.append(f"epoch {r['epoch_frac']:g}: {key} " + ("not finite, no reason" if key in r else "absent"))
    if problems:
        return fail("; ".join(problems[:3]))
    why = f"; null with reason: {'; '.join(sorted(reasons))}" if reasons else ""
    methods = sorted({str(r["grad_noise_method"]) for r in noise if r.get("grad_noise_method")})
    by = f"; grad_var by {', '.join(methods)}" if methods else ""
    return ok(f"after epochs {expected}; {', '.join(NOISE_KEYS)} finite{' or explained' if reasons else ''}{why}{by}")


def check_stamps(records: Sequence[dict[str, Any]]) -> ItemResult:
    """Every record carries step, epoch, epoch_frac and time; epoch <= epoch_frac <= epoch + 1."""
    if not records:
        return fail("no records")
    problems: Counter[str] = Counter()
    last_time = -math.inf
    for r in records:
        kind = r.get("kind", "?")
        step, epoch, frac, t = (r.get(k) for k in STAMP_KEYS)
        absent = [k for k in STAMP_KEYS if k not in r or r[k] is None]
        if absent:
            problems[f"{kind}: no {'/'.join(absent)}"] += 1
            continue
        if not (isinstance(step, int) and step >= 0 and isinstance(epoch, int) and epoch >= 0):
            problems[f"{kind}: step/epoch not a non-negative integer"] += 1
        if not (_finite(frac) and _finite(t)):
            problems[f"{kind}: epoch_frac/time not a finite number"] += 1
        elif isinstance(epoch, int) and not epoch <= frac <= epoch + 1:
            problems[f"{kind}: epoch_frac {frac:g} outside epoch {epoch}"] += 1
        elif t < last_time:
            problems[f"{kind}: time goes backwards"] += 1
        if _finite(t):
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
        if not _finite(size) or abs(size * MEGABYTE - on_disk) > 0.5:
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


def check_run(run_dir: Path, exit_code: int | None) -> tuple[ItemResult, list[dict[str, Any]]]:
    """run.json says completed and metrics.jsonl parses; returns the records too."""
    reader = MetricsReader(run_dir / "metrics.jsonl")
    records = list(reader.records())
    status = read_run_status(run_dir) or {}
    problems = []
    if status.get("status") != "completed":
        error = status.get("error") or f"see {run_dir / RUN_LOG}"
        problems.append(f"run {status.get('status', 'did not start')} (exit {exit_code}): {error}")
    if reader.bad_lines:
        problems.append(f"{reader.bad_lines} unreadable lines in metrics.jsonl")
    if not records:
        problems.append("metrics.jsonl is empty or absent")
    if problems:
        return fail("; ".join(problems)), records
    return ok(f"completed, {len(records)} records"), records


def check_resources(sweep_dir: Path, variants: Sequence[str],
                    workers_per_gpu: int | None) -> dict[str, ItemResult]:
    """Workers per GPU decided: the user's --workers-per-gpu, else a probe.json that has a choice
    for every variant of the sweep."""
    if workers_per_gpu is not None:
        if workers_per_gpu < 1:
            return dict.fromkeys(variants, fail(f"--workers-per-gpu {workers_per_gpu} (must be >= 1)"))
        return dict.fromkeys(variants, ok(f"--workers-per-gpu {workers_per_gpu} (the user's choice)"))
    from deconcnn.sweep.launch import PROBE_FILE
    from deconcnn.sweep.probe import ProbeFileError, read_probe_choice

    path = sweep_dir / PROBE_FILE
    if not path.is_file():
        return dict.fromkeys(variants, fail(f"no {path}: run `deconcnn-sweep probe-resources` "
                                            "or pass --workers-per-gpu"))
    results = {}
    for variant in variants:
        try:
            k = read_probe_choice(path, [variant])[variant]
        except ProbeFileError as error:
            results[variant] = fail(str(error))
        else:
            results[variant] = ok(f"{k} per GPU ({PROBE_FILE})")
    return results


def check_log(records: Sequence[dict[str, Any]], schedule: Schedule, run_dir: Path,
              configured_curvature_every: int | None = None) -> dict[str, ItemResult]:
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


# ---------------------------------------------------------------- the check runs


@dataclass
class VariantCheck:
    """One variant's check run: what it stands for, what ran, what its log must show."""

    variant: str
    run_id: str                       # the sweep run it is a shrunk copy of
    task: RunTask
    schedule: Schedule
    configured_curvature_every: int | None
    shrink: list[str]                 # the overrides the check added
    notes: list[str] = field(default_factory=list)
    exit_code: int | None = None
    seconds: float | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.task.run_dir)


def _override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")


def prepare_checks(runs: Sequence[Any], check_dir: Path, *, gpu: bool) -> list[VariantCheck]:
    """The first run of each variant, shrunk (module doc). Composes configs; runs nothing."""
    from deconcnn.sweep.executors import RunTask

    firsts: dict[str, Any] = {}
    for run in runs:
        firsts.setdefault(run.variant, run)
    checks = []
    total = CHECK_STEPS_PER_EPOCH * CHECK_EPOCHS
    for variant, run in firsts.items():
        cfg = _compose(variant, run.overrides)
        callbacks = cfg.get("callbacks") or {}
        shrink = ["data=synthetic",
                  f"data.source.num_samples={CHECK_STEPS_PER_EPOCH * CHECK_BATCH + CHECK_VAL_SIZE}",
                  f"data.val_size={CHECK_VAL_SIZE}", f"data.batch_size={CHECK_BATCH}",
                  f"trainer.max_epochs={CHECK_EPOCHS}", "trainer.enable_progress_bar=false"]
        notes = []
        configured_every = None
        if callbacks.get(CURVATURE) is not None:
            configured_every = int(callbacks[CURVATURE].compute_every_n_steps)
            shrink += [f"++callbacks.{CURVATURE}.compute_every_n_steps={total // CHECK_CURVATURE_FIRINGS}",
                       f"++callbacks.{CURVATURE}.batch_size={CHECK_CURVATURE_BATCH}"]
        if callbacks.get(NOISE) is not None:
            shrink.append(f"++callbacks.{NOISE}.grad_batch_size={CHECK_CURVATURE_BATCH}")
        width = float(cfg.model.width)
        if not gpu and width > CPU_MAX_WIDTH:
            shrink.append(f"model.width={CPU_MAX_WIDTH}")
            notes.append(f"model.width {width:g} -> {CPU_MAX_WIDTH:g} (no GPU: the check verifies logging, "
                         "not the model)")
        # The data source is replaced by the synthetic one, so the run's own source settings (a
        # CIFAR-10 data_dir, say) would not compose; what else the check sets, it sets last (wins).
        mine = {_override_key(o) for o in shrink}
        replaced = [o for o in run.overrides
                    if _override_key(o).startswith("data.source.") and _override_key(o) not in mine]
        if replaced:
            notes.append(f"replaced by synthetic data, not passed to the check run: {' '.join(replaced)}")
        overrides = (*(o for o in run.overrides if o not in replaced), *shrink)
        schedule = Schedule.from_config(_compose(variant, overrides))
        task = RunTask(f"check-{run.run_id}", str((check_dir / variant).resolve()), overrides)
        checks.append(VariantCheck(variant, run.run_id, task, schedule, configured_every, shrink, notes))
    return checks


def _compose(variant: str, overrides: Sequence[str]) -> Any:
    from deconcnn.runconfig import compose_run_config

    try:
        return compose_run_config(list(overrides))
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckError(f"variant {variant}: the check run's config does not compose: {message}") from None


def _run_local(checks: Sequence[VariantCheck], on_done: Callable[[VariantCheck], None]) -> None:
    from deconcnn.sweep.executors import LocalPool

    pool = LocalPool()
    if not pool.gpus:
        pool.cpu_slots = max(1, min(len(checks), os.cpu_count() or 1))  # one thread per run
    by_id = {c.task.run_id: c for c in checks}
    started = time.monotonic()

    def done(pack: list[RunTask], codes: dict[str, int]) -> None:
        for task in pack:
            check = by_id[task.run_id]
            check.exit_code, check.seconds = codes.get(task.run_id), time.monotonic() - started
            on_done(check)

    pool.run([[c.task] for c in checks], on_done=done)


def _run_slurm(checks: Sequence[VariantCheck], launcher: dict[str, Any], folder: Path, job_name: str,
               on_done: Callable[[VariantCheck], None], poll_s: float = 3.0) -> None:
    """One array of single-run tasks with the sweep's launcher settings; waits for every task."""
    from deconcnn.sweep import slurm
    from deconcnn.sweep.executors import submit_slurm
    from deconcnn.sweep.status import SLURM_ACTIVE, SLURM_WAITING

    subs = submit_slurm([[c.task] for c in checks], folder=folder, launcher=launcher, job_name=job_name,
                        max_array_size=slurm.max_array_size())
    job_of = {s.run_ids[0]: s.job_id for s in subs}
    pending = {c.task.run_id: c for c in checks}
    started = time.monotonic()
    try:
        while pending:
            states = slurm.sacct_states([job_of[r] for r in pending])
            for run_id, check in list(pending.items()):
                state = states.get(job_of[run_id])
                run = read_run_status(check.run_dir) or {}
                finished = run.get("status") in ("completed", "failed", "diverged")
                if (state is not None and state not in SLURM_WAITING | SLURM_ACTIVE) or (finished and state is None):
                    check.exit_code = 0 if run.get("status") == "completed" else 1
                    check.seconds = time.monotonic() - started
                    if state not in (None, "COMPLETED"):
                        check.notes.append(f"SLURM job {job_of[run_id]} ended {state}")
                    del pending[run_id]
                    on_done(check)
            if pending:
                time.sleep(poll_s)
    except BaseException:
        for run_id in pending:
            try:
                slurm.scancel(job_of[run_id])
            except slurm.SlurmError:
                pass
        raise


@dataclass
class CheckResult:
    sweep: str
    sweep_dir: Path
    fingerprint: str
    code_version: str
    executor: str
    checks: list[VariantCheck]
    items: dict[str, dict[str, ItemResult]]      # item -> variant -> result
    workers_per_gpu: int | None
    seconds: float
    path: Path | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for by_variant in self.items.values() for r in by_variant.values())

    @property
    def variants(self) -> list[str]:
        return [c.variant for c in self.checks]

    def failures(self) -> list[tuple[str, str, str]]:
        return [(item, variant, r.detail) for item, by_variant in self.items.items()
                for variant, r in by_variant.items() if not r.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "fingerprint": self.fingerprint,
            "code_version": self.code_version,
            "sweep": self.sweep,
            "time": time.time(),
            "seconds": round(self.seconds, 1),
            "executor": self.executor,
            "workers_per_gpu": self.workers_per_gpu,
            "shrink": {"steps_per_epoch": CHECK_STEPS_PER_EPOCH, "batch_size": CHECK_BATCH,
                       "epochs": CHECK_EPOCHS, "curvature_firings": CHECK_CURVATURE_FIRINGS},
            "variants": {c.variant: {"run_id": c.run_id, "check_run_dir": str(c.run_dir),
                                     "overrides": list(c.task.overrides), "added": c.shrink,
                                     "notes": c.notes, "exit_code": c.exit_code, "seconds": c.seconds}
                         for c in self.checks},
            "items": {item: {v: r.to_json() for v, r in by_variant.items()}
                      for item, by_variant in self.items.items()},
            "failures": [{"item": i, "variant": v, "detail": d} for i, v, d in self.failures()],
        }


def evaluate(checks: Sequence[VariantCheck], sweep_dir: Path,
             workers_per_gpu: int | None) -> dict[str, dict[str, ItemResult]]:
    """The checklist, item -> variant -> result, from the check runs' directories."""
    items: dict[str, dict[str, ItemResult]] = {item: {} for item in ITEMS}
    for check in checks:
        run_item, records = check_run(check.run_dir, check.exit_code)
        items["run"][check.variant] = run_item
        for item, result in check_log(records, check.schedule, check.run_dir,
                                      check.configured_curvature_every).items():
            items[item][check.variant] = result
    items["resources"] = check_resources(sweep_dir, [c.variant for c in checks], workers_per_gpu)
    return items


def check_sweep(sweep_file: str | Path, *, out: str | Path, overrides: Sequence[str] = (),
                executor: str = "auto", workers_per_gpu: int | None = None,
                on_done: Callable[[VariantCheck], None] = lambda check: None) -> CheckResult:
    """Run and check every variant; writes and returns the result (passed or not)."""
    from deconcnn.sweep.executors import visible_gpus
    from deconcnn.sweep.launch import CHECK_FILE, launcher_config, plan, resolve_executor
    from deconcnn.sweep.manifest import code_version

    started = time.monotonic()
    launch_plan = plan(sweep_file, out=out, overrides=overrides)   # as launch loads it: same fingerprint
    sweep, sweep_dir = launch_plan.sweep, launch_plan.sweep_dir.path
    kind = resolve_executor(executor)
    launcher = launcher_config(sweep) if kind == "slurm" else None
    gpu = bool((launcher or {}).get("gpus_per_node")) if kind == "slurm" else bool(visible_gpus())
    check_dir = sweep_dir / CHECK_DIR
    checks = prepare_checks(launch_plan.runs, check_dir, gpu=gpu)
    for check in checks:  # a finished run would be skipped by run_pack: start each check afresh
        shutil.rmtree(check.run_dir, ignore_errors=True)
    check_dir.mkdir(parents=True, exist_ok=True)
    if kind == "slurm":
        assert launcher is not None
        _run_slurm(checks, launcher, check_dir / "slurm", f"deconcnn-{sweep.name}-check", on_done)
    else:
        _run_local(checks, on_done)
    result = CheckResult(sweep.name, sweep_dir, sweep.fingerprint(), code_version(), kind, checks,
                         evaluate(checks, sweep_dir, workers_per_gpu), workers_per_gpu,
                         time.monotonic() - started)
    result.path = sweep_dir / CHECK_FILE
    write_json_atomic(result.path, result.to_json())
    return result


# ---------------------------------------------------------------- printing


def render(result: CheckResult) -> Any:
    """The checklist as a rich table: one row per item, one column per variant."""
    from rich.table import Table

    table = Table(title=f"pre-launch check: {result.sweep} ({'PASSED' if result.passed else 'FAILED'})",
                  show_lines=True)
    table.add_column("item", style="bold", max_width=28)
    for variant in result.variants:
        table.add_column(variant, overflow="fold")
    for item, label in ITEMS.items():
        cells = []
        for variant in result.variants:
            r = result.items[item].get(variant)
            if r is None:
                cells.append("")
            else:
                mark = "[green]✔[/green]" if r.passed else "[red]✘[/red]"
                cells.append(f"{mark} {_escape(r.detail)}")
        table.add_row(label, *cells)
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def shrink_summary(result: CheckResult) -> list[str]:
    lines = [f"check runs: synthetic data, {CHECK_STEPS_PER_EPOCH} steps/epoch of batch {CHECK_BATCH}, "
             f"{CHECK_EPOCHS} epochs, curvature period scaled to fire {CHECK_CURVATURE_FIRINGS} times, "
             f"curvature and gradient-noise batches of {CHECK_CURVATURE_BATCH}; schedules otherwise "
             "as configured"]
    for check in result.checks:
        for note in check.notes:
            lines.append(f"{check.variant}: {note}")
    return lines
