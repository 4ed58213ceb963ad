"""deconcnn-sweep launch: expand, validate, then submit what is not done yet.

Idempotent: run ids and directories are derived from the sweep file, never from the clock, so a
relaunch skips completed and diverged runs, leaves pending and running ones alone, and resubmits
failed and missing ones with their attempt count kept.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from deconcnn.runconfig import compose_run_config
from deconcnn.sweep import slurm
from deconcnn.sweep.executors import LocalPool, RunTask, make_packs, submit_slurm
from deconcnn.sweep.grid import RunSpec, Sweep, load_sweep, validate_runs
from deconcnn.sweep.manifest import DEFAULT_OUT, SweepChanged, SweepDir, code_version, describe_changes, new_manifest
from deconcnn.sweep.status import RESUBMITTABLE, sweep_states

DEFAULT_LAUNCHER = "deconcnn_slurm"
CHECK_FILE = "check.json"
PROBE_FILE = "probe.json"


class LaunchError(RuntimeError):
    """Launch refused: nothing was submitted."""


@dataclass
class LaunchPlan:
    sweep: Sweep
    runs: list[RunSpec]
    sweep_dir: SweepDir

    def dry_run_rows(self) -> list[dict[str, Any]]:
        return [{"run_id": r.run_id, "variant": r.variant, "overrides": list(r.overrides),
                 "dir": str(self.sweep_dir.run_dir(r.run_id))} for r in self.runs]


@dataclass
class LaunchResult:
    executor: str
    sweep_dir: Path
    submitted: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    sbatch_calls: int = 0
    job_ids: list[str] = field(default_factory=list)


def plan(sweep_file: str | Path, *, out: str | Path = DEFAULT_OUT, smoke: bool = False,
         only: str | None = None, overrides: Sequence[str] = ()) -> LaunchPlan:
    """Expand and validate every run; raises SweepFileError before anything is written."""
    launcher_keys = ("hydra.launcher.", "hydra/launcher=")
    sweep = load_sweep(sweep_file, [o for o in overrides if not o.startswith(launcher_keys)], smoke=smoke)
    sweep.launcher_overrides += [o for o in overrides if o.startswith(launcher_keys)]
    if smoke:
        sweep.name = f"{sweep.name}-smoke"
    runs = sweep.runs
    if only:
        runs = [r for r in runs if fnmatch.fnmatchcase(r.run_id, only) or r.variant == only]
        if not runs:
            variants = sorted({r.variant for r in sweep.runs})
            raise LaunchError(f"--only {only!r} matches no run (variants: {', '.join(variants)})")
    validate_runs(runs)
    return LaunchPlan(sweep, runs, SweepDir(Path(out) / sweep.name))


def resolve_executor(requested: str) -> str:
    if requested == "auto":
        return "slurm" if slurm.slurm_available() else "local"
    if requested == "slurm" and not slurm.slurm_available():
        raise LaunchError("--executor slurm: no SLURM controller answers here (sbatch/scontrol ping)")
    return requested


def launcher_config(sweep: Sweep) -> dict[str, Any]:
    """SLURM settings: the sweep file's launcher choice (default deconcnn_slurm), then the command
    line's hydra.launcher.* overrides."""
    chosen = any(o.startswith("hydra/launcher=") for o in sweep.launcher_overrides)
    overrides = [*([] if chosen else [f"hydra/launcher={DEFAULT_LAUNCHER}"]), *sweep.launcher_overrides]
    try:
        cfg = compose_run_config([sweep.runs[0].overrides[0], *overrides], hydra_config=True)
    except Exception as error:
        raise LaunchError(f"launcher settings: {str(error).splitlines()[0]}") from None
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)  # type: ignore[return-value]


def packing(sweep_dir: SweepDir, variants: set[str], workers_per_gpu: int | None) -> dict[str, int]:
    """Runs per GPU for each variant: --workers-per-gpu, else the probe's choice, else 1."""
    if workers_per_gpu is not None:
        if workers_per_gpu < 1:
            raise LaunchError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
        return dict.fromkeys(variants, workers_per_gpu)
    probe_path = sweep_dir.path / PROBE_FILE
    if not probe_path.exists():
        return dict.fromkeys(variants, 1)
    from deconcnn.sweep.probe import read_probe_choice

    return read_probe_choice(probe_path, variants)


def require_check(sweep_dir: SweepDir, sweep: Sweep) -> None:
    """SLURM time is spent only after `deconcnn-sweep check` passed on this sweep file and code."""
    try:
        check = json.loads((sweep_dir.path / CHECK_FILE).read_text())
    except FileNotFoundError:
        raise LaunchError(f"no pre-launch check for this sweep: run `deconcnn-sweep check {sweep.path}` "
                          "first (or pass --skip-check)") from None
    if not check.get("passed"):
        raise LaunchError(f"the pre-launch check failed ({sweep_dir.path / CHECK_FILE}): fix it and rerun "
                          "`deconcnn-sweep check` (or pass --skip-check)")
    if check.get("fingerprint") != sweep.fingerprint() or check.get("code_version") != code_version():
        raise LaunchError("the pre-launch check was made for another sweep file or code version: rerun "
                          "`deconcnn-sweep check` (or pass --skip-check)")


def _ensure_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LaunchError(f"cannot write to output directory {path}: {error.strerror or error}") from None


def launch(launch_plan: LaunchPlan, *, executor: str = "auto", workers_per_gpu: int | None = None,
           skip_check: bool = False, mps: bool = False, cpu_slots: int | None = None, progress: bool = True) -> LaunchResult:
    sweep, sweep_dir = launch_plan.sweep, launch_plan.sweep_dir
    kind = resolve_executor(executor)
    _ensure_writable(sweep_dir.path)
    with sweep_dir.lock():
        manifest = sweep_dir.read_manifest()
        if manifest is None:
            manifest = new_manifest(sweep, code_version())
        else:
            change = describe_changes(manifest, sweep.runs)
            if change:
                raise SweepChanged(f"{sweep.path} changed since this sweep was launched: {change}; "
                                   "launch it under another --out or name")
        if kind == "slurm" and not skip_check:
            require_check(sweep_dir, sweep)
        wanted = {r.run_id for r in launch_plan.runs}
        states = {s.run_id: s.state for s in sweep_states(sweep_dir.path) if s.run_id in wanted} \
            if sweep_dir.manifest_path.exists() else dict.fromkeys(wanted, "missing")
        result = LaunchResult(kind, sweep_dir.path)
        todo = [r for r in launch_plan.runs if states.get(r.run_id, "missing") in RESUBMITTABLE]
        for state in states.values():
            if state not in RESUBMITTABLE:
                result.skipped[state] = result.skipped.get(state, 0) + 1
        record = {"time": time.time(), "executor": kind, "runs": [r.run_id for r in todo],
                  "skip_check": skip_check, "code_version": code_version()}
        if not todo:
            manifest["submissions"].append({**record, "note": "nothing to submit"})
            sweep_dir.write_manifest(manifest)
            return result
        by_variant: dict[str, list[RunTask]] = {}
        for run in todo:
            by_variant.setdefault(run.variant, []).append(
                RunTask(run.run_id, str(sweep_dir.run_dir(run.run_id).resolve()), run.overrides))
        per_pack = packing(sweep_dir, set(by_variant), workers_per_gpu)
        for run in todo:
            manifest["runs"][run.run_id]["attempts"] += 1
        result.submitted = [r.run_id for r in todo]
        if kind == "slurm":
            _submit_to_slurm(sweep, sweep_dir, manifest, record, make_packs(by_variant, per_pack), mps, result)
        else:
            _run_here(sweep_dir, manifest, record, by_variant, per_pack, mps, cpu_slots, progress)
        return result


def _submit_to_slurm(sweep: Sweep, sweep_dir: SweepDir, manifest: dict[str, Any], record: dict[str, Any],
                     packs: list[list[RunTask]], mps: bool, result: LaunchResult) -> None:
    max_array = slurm.max_array_size()
    submissions = submit_slurm(packs, folder=sweep_dir.path / "slurm", launcher=launcher_config(sweep),
                               job_name=f"deconcnn-{sweep.name}", max_array_size=max_array, mps=mps)
    result.sbatch_calls = -(-len(packs) // max_array)
    result.job_ids = [s.job_id for s in submissions]
    for sub in submissions:
        for run_id in sub.run_ids:
            manifest["runs"][run_id]["submissions"].append(
                {"executor": "slurm", "time": record["time"], "job_id": sub.job_id,
                 "array_job_id": sub.array_job_id, "pack": sub.run_ids, "log": sub.log})
    manifest["submissions"].append({**record, "array_job_ids": sorted({s.array_job_id for s in submissions}),
                                    "sbatch_calls": result.sbatch_calls})
    sweep_dir.write_manifest(manifest)


def _run_here(sweep_dir: SweepDir, manifest: dict[str, Any], record: dict[str, Any],
              by_variant: dict[str, list[RunTask]], per_pack: dict[str, int], mps: bool,
              cpu_slots: int | None, progress: bool) -> None:
    pool = LocalPool()
    if pool.gpus:
        packs = make_packs(by_variant, per_pack)
    else:  # no GPU: k single-run slots share the cores
        packs = make_packs(by_variant, {})
        pool.cpu_slots = cpu_slots or max(per_pack.values())
    for pack in packs:
        for task in pack:
            manifest["runs"][task.run_id]["submissions"].append(
                {"executor": "local", "time": record["time"], "pid": os.getpid(),
                 "pack": [t.run_id for t in pack]})
    manifest["submissions"].append({**record, "pid": os.getpid(), "slots": len(pool.slots)})
    sweep_dir.write_manifest(manifest)
    with _progress(progress, sum(len(pack) for pack in packs)) as advance:
        pool.run(packs, on_done=advance, mps=mps)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[list[RunTask], dict[str, int]], None]]:
    """A rich progress bar over runs, with each run's outcome printed as its pack ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not enabled) as bar:
        task_id = bar.add_task("runs", total=total)

        def advance(pack: list[RunTask], codes: dict[str, int]) -> None:
            for task in pack:
                code = codes.get(task.run_id)
                bar.console.print(f"{task.run_id}: " + ("already done" if code is None else f"exit {code}"))
            bar.advance(task_id, len(pack))

        yield advance
