"""The check runs: each variant's first run, shrunk (rules.py module doc), run through the same
executor interface as a launch, locally or as one SLURM array, then judged by the rules."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deconcnn.backends import Backend, Command, Handle, SchedulerState, Submission, wait
from deconcnn.backends.registry import resolve
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.layout import SLURM_DIR
from deconcnn.runlog.run_status import read_run_status
from deconcnn.sweep.check.rules import (
    CHECK_CURVATURE_BATCH,
    CHECK_CURVATURE_FIRINGS,
    CHECK_DEBUG,
    CPU_MAX_WIDTH,
    CURVATURE,
    ITEMS,
    NOISE,
    CheckError,
    ItemResult,
    Schedule,
    check_log,
    check_resources,
    check_run,
)
from deconcnn.sweep.grid import with_debug
from deconcnn.sweep.limits import MAX_RUNS
from deconcnn.sweep.sweepdir import code_version


@dataclass
class VariantCheck:
    """One variant's check run: what it stands for, what ran, what its log must show."""

    variant: str
    run_id: str  # the sweep run it is a shrunk copy of
    command: Command
    schedule: Schedule
    configured_curvature_every: int | None
    shrink: list[str]  # the overrides the check added
    notes: list[str] = field(default_factory=list)
    outcome: str | None = None  # run.json's status once the run ended
    seconds: float | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.command.workdir)


def prepare_checks(runs: Sequence[Any], check_dir: Path, *, gpu: bool) -> list[VariantCheck]:
    """The first run of each variant, shrunk (rules.py module doc). Composes configs; runs nothing."""
    firsts: dict[str, Any] = {}
    for run in runs:
        firsts.setdefault(run.variant, run)
    checks = []
    for variant, run in firsts.items():
        cfg = _compose(variant, run.overrides)
        callbacks = cfg.get("callbacks") or {}
        shrunk, dropped = with_debug(run.overrides, CHECK_DEBUG, {str(k) for k in cfg.model})
        total = Schedule.from_config(_compose(variant, shrunk)).total_steps
        shrink = [f"debug={CHECK_DEBUG}"]
        notes = [f"not passed to the check run (debug={CHECK_DEBUG} sets them): {' '.join(dropped)}"] if dropped else []
        configured_every = None
        if callbacks.get(CURVATURE) is not None:
            configured_every = int(callbacks[CURVATURE].compute_every_n_steps)
            shrink += [
                f"++callbacks.{CURVATURE}.compute_every_n_steps={total // CHECK_CURVATURE_FIRINGS}",
                f"++callbacks.{CURVATURE}.batch_size={CHECK_CURVATURE_BATCH}",
            ]
        if callbacks.get(NOISE) is not None:
            shrink.append(f"++callbacks.{NOISE}.grad_batch_size={CHECK_CURVATURE_BATCH}")
        width = float(cfg.model.width) if "width" in cfg.model else None  # a user's model may have none
        if width is not None and not gpu and width > CPU_MAX_WIDTH:
            shrink.append(f"model.width={CPU_MAX_WIDTH}")
            notes.append(
                f"model.width {width:g} -> {CPU_MAX_WIDTH:g} (no GPU: the check verifies logging, not the model)"
            )
        elif width is None and not gpu:
            notes.append(f"{cfg.model._target_} has no model.width to cap: the check runs it as configured")
        overrides = (*shrunk, *shrink[1:])
        schedule = Schedule.from_config(_compose(variant, overrides))
        command = replace(run, overrides=overrides).command(check_dir / variant, run_id=f"check-{run.run_id}")
        checks.append(VariantCheck(variant, run.run_id, command, schedule, configured_every, shrink, notes))
    return checks


def _compose(variant: str, overrides: Sequence[str]) -> Any:
    from deconcnn.runconfig import compose_run_config

    try:
        return compose_run_config(list(overrides))
    except Exception as error:  # noqa: BLE001  Hydra and OmegaConf raise many types; the first line says what
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckError(f"variant {variant}: the check run's config does not compose: {message}") from None


def run_checks(
    checks: Sequence[VariantCheck], runner: Backend, submission: Submission, on_done: Callable[[VariantCheck], None]
) -> None:
    """One pack per check run; wait for all of them (Ctrl-C cancels what is still running)."""
    handles = runner.submit([[c.command] for c in checks], submission)
    by_handle = dict(zip(handles, checks))
    started = time.monotonic()

    def done(handle: Handle, state: SchedulerState) -> None:
        check = by_handle[handle]
        run = read_run_status(check.run_dir)
        check.outcome = run.status if run else "did not start"
        check.seconds = time.monotonic() - started
        if state.detail not in (None, "COMPLETED"):
            check.notes.append(f"{runner.kind} job {handle.id} ended {state.detail}")
        on_done(check)

    wait(runner, handles, done)


@dataclass
class CheckResult:
    sweep: str
    sweep_dir: Path
    fingerprint: str
    code_version: str
    executor: str
    checks: list[VariantCheck]
    items: dict[str, dict[str, ItemResult]]  # item -> variant -> result
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
        return [
            (item, variant, r.detail)
            for item, by_variant in self.items.items()
            for variant, r in by_variant.items()
            if not r.passed
        ]

    def changes(self) -> list[tuple[str, str, str]]:
        """Where a variant's config deliberately departs from the experiment's schedule."""
        return [
            (item, variant, r.change)
            for item, by_variant in self.items.items()
            for variant, r in by_variant.items()
            if r.change
        ]

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
            "shrink": {
                "debug": CHECK_DEBUG,
                "curvature_firings": CHECK_CURVATURE_FIRINGS,
                "monitor_batch": CHECK_CURVATURE_BATCH,
            },
            "variants": {
                c.variant: {
                    "run_id": c.run_id,
                    "check_run_dir": str(c.run_dir),
                    "overrides": list(c.command.args),
                    "added": c.shrink,
                    "notes": c.notes,
                    "outcome": c.outcome,
                    "seconds": c.seconds,
                }
                for c in self.checks
            },
            "items": {item: {v: r.to_json() for v, r in by_variant.items()} for item, by_variant in self.items.items()},
            "failures": [{"item": i, "variant": v, "detail": d} for i, v, d in self.failures()],
            "changes": [{"item": i, "variant": v, "change": c} for i, v, c in self.changes()],
        }


def evaluate(
    checks: Sequence[VariantCheck], sweep_dir: Path, workers_per_gpu: int | None, packs: bool
) -> dict[str, dict[str, ItemResult]]:
    """The checklist, item -> variant -> result, from the check runs' directories."""
    items: dict[str, dict[str, ItemResult]] = {item: {} for item in ITEMS}
    for check in checks:
        run_item, records = check_run(check.run_dir)
        items["run"][check.variant] = run_item
        for item, result in check_log(records, check.schedule, check.run_dir, check.configured_curvature_every).items():
            items[item][check.variant] = result
    items["resources"] = check_resources(sweep_dir, [c.variant for c in checks], workers_per_gpu, packs)
    return items


def check_sweep(
    sweep_file: str | Path,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | Path] = (),
    executor: str = "auto",
    workers_per_gpu: int | None = None,
    max_runs: int = MAX_RUNS,
    on_done: Callable[[VariantCheck], None] = lambda check: None,
) -> CheckResult:
    """Run and check every variant; writes and returns the result (passed or not)."""
    from deconcnn.sweep.grid import plan

    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise CheckError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
    started = time.monotonic()
    # As launch loads it (same overrides, same config directories): the same fingerprint.
    launch_plan = plan(sweep_file, out=out, overrides=overrides, config_dirs=config_dirs, max_runs=max_runs)
    sweep, sweep_dir = launch_plan.sweep, launch_plan.sweep_dir
    backend_cls = resolve(executor)
    settings = backend_cls.settings(sweep.runs[0].base, sweep.launcher_overrides)
    backend_cls.check_feasible(settings)
    # One slot per variant where the backend runs them itself (one thread per run).
    slots = max(1, min(len(sweep.variants), os.cpu_count() or 1))
    runner = backend_cls.create(sweep_dir.check_dir / SLURM_DIR, settings, slots=slots)
    gpu = runner.gpus_per_pack > 0
    checks = prepare_checks(launch_plan.runs, sweep_dir.check_dir, gpu=gpu)
    for check in checks:  # a finished run would be skipped by the pack runner: start each check afresh
        shutil.rmtree(check.run_dir, ignore_errors=True)
    sweep_dir.check_dir.mkdir(parents=True, exist_ok=True)
    run_checks(checks, runner, Submission(uuid.uuid4().hex[:12], f"deconcnn-{sweep.name}-check"), on_done)
    result = CheckResult(
        sweep.name,
        sweep_dir.path,
        sweep.fingerprint(),
        code_version(),
        backend_cls.kind,
        checks,
        evaluate(checks, sweep_dir.path, workers_per_gpu, backend_cls.detached or gpu),
        workers_per_gpu,
        time.monotonic() - started,
    )
    result.path = sweep_dir.check_file
    write_json_atomic(result.path, result.to_json())
    return result
