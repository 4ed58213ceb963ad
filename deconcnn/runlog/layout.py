"""What a directory of runs holds on disk: the name of every file in it, and the readers that only read.

A sweep directory (written by deconcnn.sweep, read by it and by deconcnn.analysis):

    <out>/<sweep name>/
        manifest.json   the runs (id, variant, overrides, params), every submission, attempts
        .lock           held by the launch that is writing the manifest (local: while it runs)
        cancel.jsonl    one line per `cancel` or Ctrl-C: when, which runs, by what
        runs/<run_id>/  each run's own files (run.json, metrics.jsonl, process.json, ...)
        slurm/          submitit's scripts and logs
        check/ check.json probe.json collected/ report/ analysis/

A Hydra multirun directory (`deconcnn-train -m ...`): multirun.yaml, and one directory per job
holding `.hydra/overrides.yaml`. Nothing here asks a scheduler or writes a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deconcnn.runlog.errors import SweepError

DEFAULT_OUT = "results"  # parent of sweep directories
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
CANCEL_FILE = "cancel.jsonl"
RUNS_DIR = "runs"
SLURM_DIR = "slurm"
CHECK_DIR = "check"
CHECK_FILE = "check.json"
PROBE_FILE = "probe.json"
COLLECTED_DIR = "collected"
REPORT_DIR = "report"
ANALYSIS_DIR = "analysis"

MULTIRUN_FILE = "multirun.yaml"
HYDRA_DIR = ".hydra"
HYDRA_OVERRIDES = "overrides.yaml"
HYDRA_CONFIG = "config.yaml"
DEFAULT_VARIANT = "default"  # a run whose config names no variant


class NotASweep(SweepError):
    """The directory holds no sweep (or its manifest is unreadable)."""


def is_multirun(path: Path) -> bool:
    """A Hydra multirun directory, and not a sweep directory (which has a manifest)."""
    return (Path(path) / MULTIRUN_FILE).is_file() and not (Path(path) / MANIFEST_FILE).is_file()


def multirun_jobs(path: Path) -> list[Path]:
    """The job directories of a Hydra multirun directory, in job number order."""
    return sorted(
        (p for p in Path(path).iterdir() if (p / HYDRA_DIR / HYDRA_OVERRIDES).is_file()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )


def job_variant(job: Path) -> str:
    """A multirun job's variant, from its composed config (DEFAULT_VARIANT where it names none)."""
    from omegaconf import DictConfig, OmegaConf

    config_file = job / HYDRA_DIR / HYDRA_CONFIG
    config = OmegaConf.load(config_file) if config_file.is_file() else None
    variant = config.get("variant") if isinstance(config, DictConfig) else None  # a list has no keys
    return str(variant or DEFAULT_VARIANT)


def read_manifest(sweep_dir: Path) -> dict[str, Any] | None:
    """The manifest, None when there is none yet; NotASweep when it is unreadable."""
    path = Path(sweep_dir)
    if path.exists() and not path.is_dir():
        raise NotASweep(f"{path} is a file, not a sweep directory")
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotASweep(
            f"{manifest_path} is corrupt ({error}): restore it from a backup, or "
            "launch the sweep file again under another --out"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), dict):
        raise NotASweep(f"{manifest_path} is corrupt (no 'runs' mapping)")
    return manifest


def last_submission(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A manifest run entry's latest submission, None when it was never submitted."""
    return entry["submissions"][-1] if entry.get("submissions") else None


def read_cancellations(sweep_dir: Path) -> dict[str, tuple[float, str]]:
    """Latest (time, by) of each cancelled run in cancel.jsonl; damaged lines are skipped."""
    out: dict[str, tuple[float, str]] = {}
    try:
        lines = (Path(sweep_dir) / CANCEL_FILE).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
            for run_id in entry["runs"]:
                if run_id not in out or entry["time"] >= out[run_id][0]:
                    out[run_id] = (float(entry["time"]), str(entry.get("by", "cancel")))
        except (ValueError, KeyError, TypeError):
            continue
    return out
