"""deconcnn-sweep cancel: stop a sweep's pending and running runs, on either executor, and record it.

The cancellation is written first (cancel.jsonl), so every party that could still start or run one
of the runs -- a live local launch, the pack runner inside a SLURM task -- skips or stops it, and
`status` calls the run cancelled (resubmittable) rather than failed. Then:
SLURM tasks whose every unfinished run is cancelled are scancel'ed (a task that also runs a run not
cancelled is left to its pack runner, which stops only the cancelled one); runs whose process lives
on this machine get SIGTERM to their process group, SIGKILL after the grace period.
"""

from __future__ import annotations

import fnmatch
import math
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from deconcnn.backends import STOP_GRACE_S, Handle, processes
from deconcnn.backends.registry import attach
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import DEFAULT_OUT, is_multirun
from deconcnn.runlog.states import LIVE_STATES
from deconcnn.sweep.state import in_its_launch, read_process, submitted_handle, sweep_states
from deconcnn.sweep.sweepdir import SweepDir

CANCELLABLE = (*LIVE_STATES, "unknown")


class NotCancellable(SweepError):
    """Runs deconcnn-sweep did not start: it holds no handle to stop them by."""


@dataclass
class CancelResult:
    sweep_dir: Path
    cancelled: list[str] = field(default_factory=list)
    stopped_here: list[str] = field(default_factory=list)  # processes signalled from this machine
    scancelled: list[str] = field(default_factory=list)  # packs cancelled through their scheduler (SLURM tasks)
    untouched: dict[str, int] = field(default_factory=dict)  # matched but not live, by state
    sweep_file: str | None = None  # as the manifest records it

    def relaunch_command(self) -> str:
        """The launch that runs the cancelled runs again: the sweep file and the folder it went to."""
        sweep_file, out = Path(self.sweep_file or "<sweep file>"), self.sweep_dir.parent
        with suppress(ValueError):
            sweep_file = sweep_file.relative_to(Path.cwd())
        with suppress(ValueError):
            out = out.resolve().relative_to(Path.cwd())
        return f"deconcnn-sweep launch {sweep_file}" + ("" if out == Path(DEFAULT_OUT) else f" --out {out}")


def matches(run_id: str, variant: str, only: str | None) -> bool:
    return only is None or fnmatch.fnmatchcase(run_id, only) or variant == only


def cancel_sweep(sweep_dir: Path, only: str | None = None, grace_s: float = STOP_GRACE_S) -> CancelResult:
    sd = SweepDir(sweep_dir)
    if is_multirun(sd.path):
        raise NotCancellable(
            f"{sd.path} is a Hydra multirun directory: its runs were started by `deconcnn-train -m`, not "
            "by deconcnn-sweep, so there is no job or process record to cancel them by; stop that command "
            "(Ctrl-C), or scancel its jobs"
        )
    manifest = sd.require_manifest()
    if not (math.isfinite(grace_s) and grace_s >= 0):  # nan passes `< 0`
        raise SweepError(f"--grace must be >= 0 and finite, got {grace_s:g}")
    states = sweep_states(sd.path, manifest, sd.cancellations())
    chosen = [s for s in states if matches(s.run_id, s.variant, only)]
    if only and not chosen:
        variants = sorted({s.variant for s in states})
        raise SweepError(f"--only {only!r} matches no run of this sweep (variants: {', '.join(variants)})")
    result = CancelResult(sd.path, sweep_file=manifest.sweep_file)
    targets = [s for s in chosen if s.state in CANCELLABLE]
    for s in chosen:
        if s.state not in CANCELLABLE:
            result.untouched[s.state] = result.untouched.get(s.state, 0) + 1
    if not targets:
        return result
    sd.record_cancel([s.run_id for s in targets], by="deconcnn-sweep cancel")
    result.cancelled = [s.run_id for s in targets]

    cancelled = set(result.cancelled)
    by_run = {s.run_id: s for s in states}
    # Packs held by a scheduler (a detached backend) are cancelled through it; a local launch
    # stops its own packs once cancel.jsonl lists their runs.
    held: dict[str, set[Handle]] = {}
    for run_id in result.cancelled:
        submission = manifest.runs[run_id].last_submission
        handle = submitted_handle(submission)
        if submission and handle and not in_its_launch(submission):
            others = [r for r in submission.pack if r not in cancelled and by_run[r].state in CANCELLABLE]
            if not others:
                held.setdefault(handle.kind, set()).add(handle)
    for handles in held.values():
        ordered = sorted(handles, key=lambda h: h.id)
        attach(ordered[0]).cancel(ordered)
        result.scancelled += [h.id for h in ordered]

    stoppers = []
    for run_id in result.cancelled:
        process = read_process(sd.run_dir(run_id))
        if process and processes.alive(process):
            stoppers.append(threading.Thread(target=processes.stop_group, args=(process.pid, grace_s)))
            result.stopped_here.append(run_id)
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    return result
