"""deconcnn-sweep probe-resources: the probe as one job through the sweep's executor (measure.py),
on one GPU of the cluster (SLURM) or of this machine (local), its lines shown as they come; then
probe.json and its plot. SIGTERM or Ctrl-C while it waits cancels the job (a local one gets
SIGTERM, and kills its workers) and ends with 143 / 130: nothing keeps running behind it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deconcnn.backends import Command, Submission, wait
from deconcnn.backends.registry import resolve
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.layout import DEFAULT_OUT
from deconcnn.runlog.run_status import RUN_LOG
from deconcnn.sweep.limits import MAX_RUNS
from deconcnn.sweep.probe.render import plot_probe
from deconcnn.sweep.probe.rules import PROBE_VERSION, ProbeFailed, ProbeSettings, VariantSpec

MEASURE_MODULE = "deconcnn.sweep.probe.measure"
PROBE_DIR = "probe"


def representatives(runs: Sequence[Any]) -> list[VariantSpec]:
    """The first run of each variant, in the sweep file's order."""
    seen: dict[str, VariantSpec] = {}
    for run in runs:
        seen.setdefault(run.variant, VariantSpec(run.variant, run.run_id, tuple(run.overrides)))
    return list(seen.values())


class LogFollower:
    """Prints the lines a job appends to its log, as they come."""

    def __init__(self, path: Path, report: Callable[[str], None]) -> None:
        self.path, self.report, self.offset = path, report, 0

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            self.report(line)


def probe_resources(
    sweep_file: str | Path,
    *,
    executor: str = "auto",
    settings: ProbeSettings = ProbeSettings(),
    out: str | Path = DEFAULT_OUT,
    file: str | Path | None = None,
    only: str | None = None,
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | Path] = (),
    max_runs: int = MAX_RUNS,
    report: Callable[[str], None] = lambda line: None,
) -> tuple[Path, dict[str, Any]]:
    """Probe a sweep's variants in one job; write probe.json (+ .png); return both."""
    from deconcnn.sweep.grid import plan
    from deconcnn.sweep.launch import signals_interrupt

    if settings.max_workers < 1 or settings.steps < 1 or settings.warmup < 1:
        raise ProbeFailed("--max-workers, --steps and --warmup must be >= 1")
    launch_plan = plan(sweep_file, out=out, only=only, overrides=overrides, config_dirs=config_dirs, max_runs=max_runs)
    sweep_dir = launch_plan.sweep_dir
    specs = representatives(launch_plan.runs)
    backend_cls = resolve(executor)
    sweep = launch_plan.sweep
    # The probe measures ONE GPU of a node like the sweep's.
    on = backend_cls.single_gpu(backend_cls.settings(sweep.runs[0].base, sweep.launcher_overrides))
    backend_cls.check_feasible(on)
    runner = backend_cls.create(sweep_dir.slurm_dir / PROBE_DIR, on, slots=1)
    path = Path(file) if file else sweep_dir.probe_file
    workdir = sweep_dir.path / PROBE_DIR
    workdir.mkdir(parents=True, exist_ok=True)
    request, result_file = workdir / "request.json", workdir / "result.json"
    result_file.unlink(missing_ok=True)
    write_json_atomic(request, {"specs": [asdict(s) for s in specs], "settings": asdict(settings)})
    header = {
        "version": PROBE_VERSION,
        "sweep": launch_plan.sweep.name,
        "sweep_file": str(Path(sweep_file).resolve()),
        "fingerprint": launch_plan.sweep.fingerprint(),
        "overrides": list(overrides),
        "executor": backend_cls.kind,
        "created": time.time(),
    }
    command = Command("probe", MEASURE_MODULE, ("--request", str(request), "--out", str(result_file)), str(workdir))
    [handle] = runner.submit([[command]], Submission(uuid.uuid4().hex[:12], f"deconcnn-{launch_plan.sweep.name}-probe"))
    header["job_id"] = runner.job_id(handle)
    report(f"probe running as {runner.where(handle)} (log: {workdir / RUN_LOG})")
    follow = LogFollower(workdir / RUN_LOG, report)
    with signals_interrupt():  # wait() cancels the job on the way out
        final = wait(runner, [handle], on_poll=follow, poll_s=2.0)[handle]
    follow()
    try:
        data = json.loads(result_file.read_text())
    except (OSError, ValueError):
        raise ProbeFailed(
            f"the probe job ended ({final.detail or final.state}) without a result: see {workdir / RUN_LOG}"
        ) from None
    result = {**header, **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    plot_probe(result, path.with_suffix(".png"))
    return path, result
