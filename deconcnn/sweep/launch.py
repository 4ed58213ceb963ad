"""deconcnn-sweep launch: expand, validate, then submit what is not done yet.

Idempotent: run ids and directories are derived from the sweep file, never from the clock, so a
relaunch keeps completed and diverged runs, leaves pending and running ones alone, and resubmits
failed, cancelled, lost and missing ones (deconcnn.sweep.state), with their attempt count kept.

Everything that can be refused is refused before anything is submitted: the sweep file and the
config of every run (a relaunch composes only the runs it submits), the options, the launcher
settings and whether the cluster can ever run one task. A SLURM launch queues no more tasks than
the site's job limits leave room for now (MaxSubmitJobs, MaxJobCount): the rest wait, as missing
runs, for the next launch (a wave), and with no room at all the launch is refused with the
numbers. What it queues is journaled before sbatch is called (deconcnn.backends.journal); a launch
reconciles the journal of an interrupted one first. A local launch runs its packs here and waits;
Ctrl-C or SIGTERM stops them (SIGTERM to each run's process group, SIGKILL after the grace
period), records them as cancelled and ends with 130 / 143.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from deconcnn.backends import STOP_GRACE_S, Backend, BackendError, Command, Handle, SchedulerState, Submission, wait
from deconcnn.backends.journal import Journal
from deconcnn.backends.registry import backends, resolve
from deconcnn.runlog.errors import Interrupted, SweepError
from deconcnn.runlog.records import Deferred, LaunchRecord, Manifest, RunSubmission, gc_paused
from deconcnn.runlog.run_status import read_run_status
from deconcnn.runlog.states import RESUBMITTABLE
from deconcnn.sweep.grid import LaunchPlan, RunSpec, Sweep
from deconcnn.sweep.probe.rules import probe_hours_per_run, read_probe_choice
from deconcnn.sweep.state import run_dirs, sweep_states
from deconcnn.sweep.state_cache import RunStatusCache
from deconcnn.sweep.sweepdir import SweepChanged, SweepDir, code_version


class LaunchError(SweepError):
    """Launch refused: nothing was submitted."""


@dataclass
class LaunchResult:
    executor: str  # the backend's kind
    detached: bool  # the backend returned at once: its runs go on without this process
    sweep_dir: Path
    submitted: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    sbatch_calls: int = 0
    job_ids: list[str] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # local: each run's state once its pack ended
    packs: dict[Handle, list[str]] = field(default_factory=dict)  # each submitted handle's runs
    slots: int | None = None  # local: packs run at a time
    deferred: list[str] = field(default_factory=list)  # runs a job limit left for the next launch (wave)
    limit: str | None = None  # the limit that deferred them
    notes: list[str] = field(default_factory=list)  # what the launch found and repaired (a journal)


def new_manifest(sweep: Sweep, code_version: str) -> Manifest:
    return Manifest(
        sweep.name,
        str(sweep.path.resolve()),
        sweep.fingerprint(),
        code_version,
        time.time(),
        tuple(sweep.variants),
        tuple(sweep.axes),
        {run.run_id: run.entry() for run in sweep.runs},
        grid_source=sweep.source,
    )


def describe_changes(manifest: Manifest, runs: list[RunSpec]) -> str | None:
    """None if the sweep still expands to the manifest's runs, else a one-line summary of the change."""
    old = {run_id: entry.overrides for run_id, entry in manifest.runs.items()}
    new = {run.run_id: tuple(run.overrides) for run in runs}
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
    if not (added or removed or changed):
        return None
    parts = []
    for label, ids in (("added", added), ("removed", removed), ("changed overrides", changed)):
        if ids:
            parts.append(f"{len(ids)} {label} (e.g. {ids[0]})")
    return "; ".join(parts)


def pack_submissions(
    submission: Submission, packs: Sequence[tuple[Handle, Sequence[str]]], backend: Backend
) -> list[RunSubmission]:
    """Each (handle, run ids) pack of a submission as its runs' manifest entries keep it."""
    return [
        RunSubmission(
            submission.id,
            handle.kind,
            submission.submitted_at,
            handle.id,
            backend.job_id(handle),
            tuple(names),
            backend.log_of(handle),
        )
        for handle, names in packs
    ]


def record_submission(
    manifest: Manifest,
    record: LaunchRecord,
    submission: Submission,
    packs: Sequence[tuple[Handle, Sequence[str]]],
    backend: Backend,
) -> Manifest:
    """The manifest with a submission recorded: each (handle, run ids) pack's runs get an attempt."""
    return manifest.with_submission(record, [(p.pack, p) for p in pack_submissions(submission, packs, backend)])


def reconcile_journal(sweep_dir: SweepDir, manifest: Manifest) -> tuple[str | None, Manifest]:
    """Record what an interrupted launch of this sweep queued (deconcnn.backends.journal), whichever
    backend this launch uses: each backend recovers the journals of its own submissions. Returns
    a line saying what was recovered (None: nothing) and the manifest as it now stands."""
    if not sweep_dir.journal_path.exists():
        return None, manifest
    current = manifest

    def write(recorded: Manifest) -> None:
        nonlocal current
        sweep_dir.write_manifest(recorded)
        current = recorded

    for cls in backends().values():
        try:
            note = cls.recover(sweep_dir.journal_path, sweep_dir.slurm_dir, current, record_submission, write)
        except BackendError as error:
            raise LaunchError(str(error)) from None
        if note:
            return note, current
    return None, current


def refuse_changed(sweep: Sweep, manifest: Manifest | None) -> None:
    """A sweep directory runs the grid it was launched with: an edited sweep file is refused (by
    launch, and by a dry run with the same line)."""
    change = describe_changes(manifest, sweep.runs) if manifest is not None else None
    if change:
        raise SweepChanged(
            f"{sweep.path} changed since this sweep was launched: {change}; launch it under another --out or name"
        )


def make_packs(commands_by_variant: dict[str, list[Command]], per_pack: dict[str, int]) -> list[list[Command]]:
    """Group runs of the same variant k at a time (the probe measures k per variant)."""
    packs: list[list[Command]] = []
    for variant, commands in commands_by_variant.items():
        k = max(1, per_pack.get(variant, 1))
        packs.extend(commands[i : i + k] for i in range(0, len(commands), k))
    return packs


def packing(sweep_dir: SweepDir, variants: Sequence[str], workers_per_gpu: int | None) -> dict[str, int]:
    """Runs per GPU for each variant: --workers-per-gpu, else the probe's choice, else 1."""
    if workers_per_gpu is not None:
        return dict.fromkeys(variants, workers_per_gpu)
    if not sweep_dir.probe_file.exists():
        return dict.fromkeys(variants, 1)
    return read_probe_choice(sweep_dir.probe_file, variants)


def require_check(sweep_dir: SweepDir, sweep: Sweep) -> None:
    """SLURM time is spent only after `deconcnn-sweep check` passed on this sweep file and code."""
    import json

    try:
        check = json.loads(sweep_dir.check_file.read_text())
    except FileNotFoundError:
        raise LaunchError(
            f"no pre-launch check for this sweep: run `deconcnn-sweep check {sweep.path}` first (or pass --skip-check)"
        ) from None
    except (OSError, ValueError) as error:
        raise LaunchError(f"{sweep_dir.check_file} is unreadable ({error}): rerun `deconcnn-sweep check`") from None
    if not check.get("passed"):
        raise LaunchError(
            f"the pre-launch check failed ({sweep_dir.check_file}): fix it and rerun "
            "`deconcnn-sweep check` (or pass --skip-check)"
        )
    if check.get("fingerprint") != sweep.fingerprint() or check.get("code_version") != code_version():
        raise LaunchError(
            "the pre-launch check was made for another sweep file or code version: rerun "
            f"`deconcnn-sweep check {sweep.path}` (or pass --skip-check)"
        )


def _ensure_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LaunchError(f"cannot write to output directory {path}: {error.strerror or error}") from None


def check_options(workers_per_gpu: int | None, cpu_slots: int | None, grace_s: float) -> None:
    for name, value in (("--workers-per-gpu", workers_per_gpu), ("--parallel", cpu_slots)):
        if value is not None and value < 1:
            raise LaunchError(f"{name} must be >= 1, got {value}")
    if not (math.isfinite(grace_s) and grace_s >= 0):  # nan passes `< 0`
        raise LaunchError(f"--grace must be >= 0 and finite, got {grace_s:g}")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted (once: a second one during the clean-up is ignored)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def launch(
    launch_plan: LaunchPlan,
    *,
    executor: str = "auto",
    workers_per_gpu: int | None = None,
    skip_check: bool = False,
    mps: bool = False,
    cpu_slots: int | None = None,
    grace_s: float = STOP_GRACE_S,
    on_run_done: Callable[[str, str], None] = lambda run_id, state: None,
    on_submitted: Callable[[LaunchResult], None] = lambda result: None,
    on_poll: Callable[[int], None] = lambda running: None,
) -> LaunchResult:
    """Submit the plan's runs that are not final; `on_submitted` runs once the executor took them;
    a local launch then waits, calling `on_poll` with the number of runs running at every poll."""
    sweep_dir = launch_plan.sweep_dir
    check_options(workers_per_gpu, cpu_slots, grace_s)
    backend_cls = resolve(executor)
    settings = launch_plan.launcher_settings(backend_cls)
    backend_cls.check_feasible(settings)
    fresh = not sweep_dir.path.exists()
    # Identified before it is read (a manifest replaced or appended to after reads as changed); a
    # corrupt one refuses the launch before the lock is taken. A relaunch's plan read it already.
    read_before = launch_plan.read or (sweep_dir.written(), sweep_dir.read_manifest())
    entries = run_dirs(sweep_dir.runs_dir)  # one listing: whether an entry is a link comes with it
    linked = [
        problem
        for problem in (
            sweep_dir.run_dir_problem(r.run_id)
            for r in launch_plan.runs
            if r.run_id in entries and entries[r.run_id].is_symlink()
        )
        if problem
    ]
    if linked:  # its run would write wherever the link points
        more = f" (and {len(linked) - 1} more)" if len(linked) > 1 else ""
        raise LaunchError(f"{linked[0]}{more}; nothing submitted")
    _ensure_writable(sweep_dir.path)
    try:
        return _launch_locked(
            launch_plan,
            read_before,
            backend_cls,
            settings,
            workers_per_gpu,
            skip_check,
            mps,
            cpu_slots,
            grace_s,
            on_run_done,
            on_submitted,
            on_poll,
        )
    except SweepError:
        # Refused before anything was recorded: leave no trace of the attempt (a journal is a record).
        if fresh and not sweep_dir.journal_path.exists():
            shutil.rmtree(sweep_dir.path, ignore_errors=True)
        raise


def _launch_locked(
    launch_plan: LaunchPlan,
    read_before: tuple[tuple[tuple[int, ...], ...], Manifest | None],
    backend_cls: type[Backend],
    settings: dict[str, Any],
    workers_per_gpu: int | None,
    skip_check: bool,
    mps: bool,
    cpu_slots: int | None,
    grace_s: float,
    on_run_done: Callable[[str, str], None],
    on_submitted: Callable[[LaunchResult], None],
    on_poll: Callable[[int], None],
) -> LaunchResult:
    sweep, sweep_dir = launch_plan.sweep, launch_plan.sweep_dir
    with sweep_dir.lock():
        # Read again only if another launch wrote it meanwhile (50,000 runs: half a second a read).
        written, manifest = read_before
        if manifest is None or sweep_dir.written() != written:
            manifest = sweep_dir.read_manifest()
        refuse_changed(sweep, manifest)
        if manifest is None:
            manifest = new_manifest(sweep, code_version())
        recovered, manifest = reconcile_journal(sweep_dir, manifest)
        if backend_cls.detached and not skip_check:  # queued time no one watches: checked first
            require_check(sweep_dir, sweep)
        wanted = {r.run_id for r in launch_plan.runs}
        with gc_paused():  # every run's state (status.current_states)
            run_status = RunStatusCache(sweep_dir.path)
            states = {
                s.run_id: s.state
                for s in sweep_states(sweep_dir.path, manifest, sweep_dir.cancellations(), run_status, logs=False)
                if s.run_id in wanted
            }
        result = LaunchResult(
            backend_cls.kind, backend_cls.detached, sweep_dir.path, notes=[recovered] if recovered else []
        )
        todo = [r for r in launch_plan.runs if states[r.run_id] in RESUBMITTABLE]
        # Fewest attempts first: when job limits cut a launch into waves, the runs a wave left
        # waiting go before retries of failed ones.
        todo.sort(key=lambda r: manifest.runs[r.run_id].attempts)
        if not launch_plan.validated:  # only what is submitted: the rest was validated when it was
            launch_plan.validate(todo)
        for state in states.values():
            if state not in RESUBMITTABLE:
                result.skipped[state] = result.skipped.get(state, 0) + 1
        submission = Submission(uuid.uuid4().hex[:12], f"deconcnn-{sweep.name}", str(sweep_dir.cancel_path))
        record = LaunchRecord(
            submission.id,
            submission.submitted_at,
            backend_cls.kind,
            tuple(r.run_id for r in todo),
            skip_check,
            code_version(),
        )
        if not todo:
            sweep_dir.record_launch(manifest, replace(record, note="nothing to submit"), [])
            return result
        by_variant: dict[str, list[Command]] = {}
        for run in todo:
            by_variant.setdefault(run.variant, []).append(run.command(sweep_dir.run_dir(run.run_id), sweep=sweep.name))
        per_pack = packing(sweep_dir, list(by_variant), workers_per_gpu)
        # A detached backend's packs outlive this process: what it queues is journaled first.
        journal = Journal(sweep_dir.journal_path, submission, record.to_json()) if backend_cls.detached else None
        runner = backend_cls.create(sweep_dir.slurm_dir, settings, mps=mps, grace_s=grace_s, journal=journal)
        packs = make_packs(by_variant, runner.fit_packing(per_pack, cpu_slots))
        packs = _fit_limits(runner, packs, result)
        result.slots = runner.slots
        handles = runner.submit(packs, submission)
        if len(handles) < len(packs):  # a job limit refused the rest mid-way (Backend.stopped_by)
            result.deferred += [c.name for pack in packs[len(handles) :] for c in pack]
            result.limit = runner.stopped_by
            packs = packs[: len(handles)]
        result.packs = {handle: [c.name for c in pack] for handle, pack in zip(handles, packs)}
        queued = {name for names in result.packs.values() for name in names}
        result.submitted = [r.run_id for r in todo if r.run_id in queued]
        deferred = Deferred(len(result.deferred), result.limit) if result.deferred else None
        on_submitted(result)
        record = replace(record, runs=tuple(result.submitted), deferred=deferred, described=runner.describe(handles))
        sweep_dir.record_launch(manifest, record, pack_submissions(submission, list(result.packs.items()), runner))
        launch_plan.remember_validation()  # the next wave or relaunch takes these runs as validated
        run_status.save()
        if journal:
            journal.finish()
        if backend_cls.detached:
            result.sbatch_calls = record.described.get("sbatch_calls", 0)
            result.job_ids = [job for job in map(runner.job_id, handles) if job]
            return result
        _wait_here(runner, handles, packs, sweep_dir, result, on_run_done, on_poll)
        return result


def _fit_limits(runner: Backend, packs: list[list[Command]], result: LaunchResult) -> list[list[Command]]:
    """The packs the scheduler's job limits let this launch queue now; the runs of the rest are
    deferred to the next launch. No room at all is a refusal, with the numbers."""
    room, why = runner.room()
    if room is None or room >= len(packs):
        return packs
    runs = sum(len(p) for p in packs)
    if room == 0:
        raise LaunchError(
            f"the site's job limits leave no room for a task now ({why}): {len(packs)} tasks ({runs} runs) "
            "wait; launch again when jobs have ended"
        )
    result.deferred = [c.name for pack in packs[room:] for c in pack]
    result.limit = why
    return packs[:room]


def _wait_here(
    runner: Backend,
    handles: list[Handle],
    packs: list[list[Command]],
    sweep_dir: SweepDir,
    result: LaunchResult,
    on_run_done: Callable[[str, str], None],
    on_poll: Callable[[int], None],
) -> None:
    pack_of = dict(zip(handles, packs))

    def poll() -> None:
        live = runner.poll([h for h in handles if not all(c.name in result.final for c in pack_of[h])])
        on_poll(sum(len(pack_of[h]) for h, state in live.items() if state.state == "running"))

    def done(handle: Handle, state: SchedulerState) -> None:
        outcomes = {}
        for command in pack_of[handle]:
            run = read_run_status(Path(command.workdir))
            outcome = "not started" if run is None else "ended while running" if run.status == "running" else run.status
            result.final[command.name] = outcomes[command.name] = outcome
        poll()  # the running count without this pack
        for name, outcome in outcomes.items():
            on_run_done(name, outcome)

    try:
        with signals_interrupt():
            wait(runner, handles, done, poll_s=0.5, on_poll=poll)
    except Interrupted as interrupt:
        stopped = [c.name for h in handles for c in pack_of[h] if c.name not in result.final]
        sweep_dir.record_cancel(stopped, by=interrupt.args[0])
        print(
            f"deconcnn-sweep: {interrupt.args[0]}: {len(stopped)} runs stopped and recorded as cancelled; "
            "launch again to run them",
            file=sys.stderr,
        )
        raise


def describe_plan(
    launch_plan: LaunchPlan, backend_cls: type[Backend], workers_per_gpu: int | None, settings: dict[str, Any]
) -> list[str]:
    """What a launch would submit: array tasks, runs per task, GPUs, and GPU-hours when a probe or
    finished runs give a time per run."""
    sweep_dir = launch_plan.sweep_dir
    by_variant: dict[str, int] = {}
    for run in launch_plan.runs:
        by_variant[run.variant] = by_variant.get(run.variant, 0) + 1
    try:
        per_pack = packing(sweep_dir, list(by_variant), workers_per_gpu)
    except SweepError:
        per_pack = dict.fromkeys(by_variant, 1)
    gpus = backend_cls.plan_gpus(settings)
    hours = _hours_per_run(sweep_dir)
    lines = []
    total_tasks, total_gpu_h = 0, 0.0
    for variant, n in by_variant.items():
        k = per_pack.get(variant, 1)
        tasks = -(-n // k)
        total_tasks += tasks
        line = f"  {variant}: {n} runs, {k} per task -> {tasks} tasks"
        if gpus:
            line += f" x {gpus} GPU"
        if variant in hours:
            gpu_h = tasks * max(1, gpus) * hours[variant] * k
            total_gpu_h += gpu_h
            line += f", ~{hours[variant]:.2f} h per run ({'GPU' if gpus else 'slot'}-hours ~{gpu_h:.1f})"
        lines.append(line)
    head = f"plan ({backend_cls.plan_where}): {total_tasks} tasks for {len(launch_plan.runs)} runs"
    if total_gpu_h:
        head += f", estimated {total_gpu_h:.1f} {'GPU' if gpus else 'slot'}-hours"
    elif not hours:
        head += " (no time per run known yet: run probe-resources or finish a run for an estimate)"
    return [head, *lines]


def _hours_per_run(sweep_dir: SweepDir) -> dict[str, float]:
    """Median wall time of finished runs per variant, else the probe's throughput x the run's steps."""
    import statistics

    manifest = None
    with suppress(SweepError):
        manifest = sweep_dir.read_manifest()
    hours: dict[str, list[float]] = {}
    for run_id, entry in (manifest.runs if manifest else {}).items():
        run = read_run_status(sweep_dir.run_dir(run_id))
        if run and run.status == "completed" and run.end_time and run.start_time and run.attempt == 1:
            hours.setdefault(entry.variant, []).append((run.end_time - run.start_time) / 3600)
    out = {variant: statistics.median(values) for variant, values in hours.items()}
    if sweep_dir.probe_file.exists():
        for variant, value in probe_hours_per_run(sweep_dir.probe_file).items():
            out.setdefault(variant, value)
    return out
