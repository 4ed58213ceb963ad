"""What a directory of runs holds: its runs, their identity (variant and swept values) and state.

Two kinds of directory are read:
- a sweep directory (`deconcnn-sweep launch`): the manifest lists the runs in the sweep file's
  order with their variant and `params` (the swept keys and values, e.g. `optim.lr: 0.1`); each
  run's state is the one its files record (deconcnn.runlog.states: no scheduler is asked, so a
  finished run's state is the one `status` shows, an unfinished one's is how far its files say it got);
- a Hydra multirun directory (`deconcnn-train -m ...`, holding `multirun.yaml`): each numbered job
  directory is a run, its `.hydra/overrides.yaml` gives the swept values (the keys whose values
  differ between jobs are the axes), its `variant` comes from `.hydra/config.yaml`, and its state
  from its run.json.

Axes are columns under their own names (`optim.lr`, `model.width`, `seed`), in the order the sweep
file (or the command line) names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deconcnn.runlog import layout
from deconcnn.runlog.layout import (
    HYDRA_CONFIG,
    HYDRA_DIR,
    HYDRA_OVERRIDES,
    MANIFEST_FILE,
    MULTIRUN_FILE,
    RUNS_DIR,
    NotASweep,
    job_variant,
    multirun_jobs,
    read_cancellations,
)
from deconcnn.runlog.manifest_store import read_manifest
from deconcnn.runlog.run_status import read_checked_status, read_run_status
from deconcnn.runlog.states import recorded_job_state, recorded_state

#: Tables that join several sweeps (deconcnn.analysis.compare) name each row's sweep here; a run is
#: then known by `run_key`, since two sweeps of one grid share their run ids.
SWEEP_COLUMN = "sweep"
#: Where several sweeps taken as one go by default, beside the first: compare-<A>+<B>/{collected,report}.
COMPARE_PREFIX = "compare-"


def run_key(run_id: str, sweep: str | None = None) -> str:
    """A run's name across sweeps: ``<sweep>/<run_id>``, or its run_id within one sweep."""
    return run_id if sweep is None else f"{sweep}/{run_id}"


@dataclass
class RunInfo:
    run_id: str
    run_dir: Path | None  # None: listed but never created
    variant: str | None
    params: dict[str, Any]
    state: str
    reason: str | None = None
    in_manifest: bool = True
    overrides: list[str] | None = None


@dataclass
class SweepSource:
    name: str
    path: Path
    kind: str  # "sweep" or "multirun"
    runs: list[RunInfo]
    axes: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)

    def axis_values(self, axis: str) -> list[Any]:
        """The axis's distinct values, sorted (numbers numerically)."""
        return sorted({r.params.get(axis) for r in self.runs if r.params.get(axis) is not None}, key=_sort_key)


def _sort_key(value: Any) -> tuple:
    return (value is None, isinstance(value, str), value if value is not None else 0)


def _first_seen(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def read_source(path: Path) -> SweepSource:
    """The runs of a sweep or Hydra multirun directory (module doc); NotASweep for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise NotASweep(f"{path} is not a directory")
    if (path / MANIFEST_FILE).is_file() or (path / RUNS_DIR).is_dir():
        return _sweep_source(path)
    if (path / MULTIRUN_FILE).is_file():
        return _multirun_source(path)
    raise NotASweep(
        f"{path} is not a sweep directory (no {MANIFEST_FILE}, no {RUNS_DIR}/) nor a Hydra multirun "
        f"directory (no {MULTIRUN_FILE})"
    )


def _sweep_source(path: Path) -> SweepSource:
    manifest = read_manifest(path)
    entries = manifest.runs if manifest else {}
    cancellations = read_cancellations(path)
    runs_dir = path / RUNS_DIR
    runs = []
    for run_id, entry in entries.items():
        run_dir = layout.run_dir(path, run_id)
        linked = layout.run_dir_problem(path, run_id)
        state, reason = (
            ("failed", f"refused: {linked}")  # nothing is read through a link (as `status` shows it)
            if linked
            else recorded_state(entry.last_submission, read_checked_status(run_dir), cancellations.get(run_id))
        )
        runs.append(
            RunInfo(
                run_id,
                run_dir if run_dir.is_dir() and not linked else None,
                entry.variant,
                dict(entry.params),
                state,
                reason,
                True,
                list(entry.overrides),
            )
        )
    listed = set(entries)
    if runs_dir.is_dir():  # directories the manifest does not list (copied in, renamed)
        for run_dir in sorted(
            p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        ):
            if run_dir.name not in listed:
                run = read_run_status(run_dir)
                status = run.status if run else "unknown"
                runs.append(RunInfo(run_dir.name, run_dir, None, {}, status, "not in the manifest", False))
    # The manifest keeps the sweep file's order of axes and variants (its mappings are written sorted).
    axes = _first_seen([*(manifest.axes if manifest else ()), *(k for r in runs for k in r.params)])
    variants = _first_seen([*(manifest.variants if manifest else ()), *(r.variant for r in runs)])
    runs.sort(
        key=lambda r: (
            r.variant not in variants,
            variants.index(r.variant) if r.variant in variants else 0,
            [(_sort_key(r.params.get(a))) for a in axes],
            r.run_id,
        )
    )
    return SweepSource(manifest.sweep if manifest else path.name, path, "sweep", runs, axes, variants)


def _multirun_source(path: Path) -> SweepSource:
    from omegaconf import OmegaConf

    runs = []
    for job in multirun_jobs(path):
        overrides = [str(o) for o in OmegaConf.load(job / HYDRA_DIR / HYDRA_OVERRIDES)]
        params: dict[str, Any] = {}
        for line in overrides:
            key, _, value = line.partition("=")
            params[key.lstrip("+~")] = _scalar(value)
        state, reason = recorded_job_state(read_checked_status(job))
        runs.append(RunInfo(job.name, job, job_variant(job), params, state, reason, True, overrides))
    keys = _first_seen([k for r in runs for k in r.params])
    axes = [k for k in keys if len({repr(r.params.get(k)) for r in runs}) > 1]
    for run in runs:  # the axes are the swept keys; the rest are settings every job shares
        run.params = {k: run.params.get(k) for k in axes}
    return SweepSource(path.name, path, "multirun", runs, axes, _first_seen([r.variant for r in runs]))


def run_setting(run: RunInfo, key: str) -> Any:
    """The value a run used for a config key it did not sweep (`optim.lr` of a sweep that fixed it),
    from its composed config (.hydra/config.yaml), else from its overrides; None where unknown."""
    from omegaconf import DictConfig, OmegaConf

    config_file = run.run_dir / HYDRA_DIR / HYDRA_CONFIG if run.run_dir else None
    if config_file is not None and config_file.is_file():
        config = OmegaConf.load(config_file)
        value = OmegaConf.select(config, key, default=None) if isinstance(config, DictConfig) else None
        if isinstance(value, (int, float, bool, str)):
            return value
    for line in reversed(run.overrides or []):  # the last one wins, as in Hydra
        name, _, text = line.partition("=")
        if name.lstrip("+~") == key:
            return _scalar(text)
    return None


def _scalar(text: str) -> Any:
    """An override value as Hydra would type it: int, float, bool, null or string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(f"k={text}").value()
    except Exception:  # noqa: BLE001 - a value Hydra cannot parse stays the text it is
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else str(value)
