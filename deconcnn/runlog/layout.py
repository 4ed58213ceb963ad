"""What a directory of runs holds on disk: the name of every file in it, and the readers that only read.

A sweep directory (written by deconcnn.sweep, read by it and by deconcnn.analysis):

    <out>/<sweep name>/
        manifest.json   the runs (id, variant, overrides, params), every submission, attempts
        submissions.jsonl  launches recorded since manifest.json was last written, a line each
                        (deconcnn.runlog.records: a reader folds them into the manifest)
        .manifest-parsed.json  manifest.json parsed, for the bytes it names (deconcnn.runlog.manifest_store)
        .lock           held by the launch that is writing the manifest (local: while it runs)
        .run-states.json  status's cache of the finished runs' run.json (deconcnn.sweep.state_cache)
        .validated.json   the runs whose configs passed, and under what (deconcnn.sweep.validated)
        cancel.jsonl    one line per `cancel` or Ctrl-C: when, which runs, by what
        submitting.jsonl  the SLURM submission in flight (deconcnn.backends.journal); gone once recorded
        runs/<run_id>/  each run's own files (run.json, metrics.jsonl, process.json, ...)
        slurm/<submission>-<i>/  submitit's script and task logs of each array (older sweeps: slurm/ itself)
        check/ check.json probe.json collected/ report/ analysis/

A Hydra multirun directory (`deconcnn-train -m ...`): multirun.yaml, and one directory per job
holding `.hydra/overrides.yaml`. Nothing here asks a scheduler or writes a file. What the
sweep's own files hold (manifest.json, run.json, process.json): deconcnn.runlog.records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from pathlib import Path

from deconcnn.runlog.errors import SweepError

DEFAULT_OUT = "results"  # parent of sweep directories
MANIFEST_FILE = "manifest.json"
SUBMISSIONS_LOG = "submissions.jsonl"
LOCK_FILE = ".lock"
MANIFEST_PARSED = ".manifest-parsed.json"
RUN_STATES_CACHE = ".run-states.json"
VALIDATED_FILE = ".validated.json"
CANCEL_FILE = "cancel.jsonl"
JOURNAL_FILE = "submitting.jsonl"
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


class UnsafeRunDir(SweepError):
    """A run id or run directory that would put a run's files outside `<sweep>/runs`."""


#: A run id is a directory name under runs/: one path component, never hidden, never a way out.
#: Refused rather than encoded, so a run's directory is always named exactly as its id.
_UNSAFE_RUN_ID = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.|^\.|^$")
NAME_MAX = 255  # bytes in one path component (Linux, most file systems)


def run_id_problem(run_id: object) -> str | None:
    """Why `run_id` cannot name a directory under runs/ (None: it can)."""
    if not isinstance(run_id, str):
        return f"run id {run_id!r} is not a string"
    if _UNSAFE_RUN_ID.search(run_id):
        return (
            f"run id {run_id!r} cannot name a directory under {RUNS_DIR}/: it must not hold '/', '..', "
            "control characters or begin with '.'"
        )
    if len(run_id.encode()) > NAME_MAX:
        return f"run id {run_id[:40]!r}... is {len(run_id.encode())} bytes long; a directory name holds {NAME_MAX}"
    return None


def run_ids_problem(run_ids: Collection[str]) -> str | None:
    """run_id_problem of the first of `run_ids` that has one (None: each names a directory). A
    manifest's 50,000 keys are checked by C-level passes (a Python call per key is 0.1 s); the
    first problem is looked for key by key only when a pass finds one."""
    if not any(map(_UNSAFE_RUN_ID.search, run_ids)) and max(map(len, map(str.encode, run_ids)), default=0) <= NAME_MAX:
        return None
    return next(filter(None, map(run_id_problem, run_ids)), None)


def run_dir(sweep_dir: Path, run_id: str) -> Path:
    """`<sweep>/runs/<run_id>`, the one place a run's directory is named; a run id that is not one
    plain directory name (run_id_problem) is refused, so no run's files land outside runs/. (status
    joins runs/ and the manifest's run ids itself: Manifest.from_json checked them.)"""
    problem = run_id_problem(run_id)
    if problem:
        raise UnsafeRunDir(problem)
    return Path(sweep_dir) / RUNS_DIR / run_id


def run_dir_problem(sweep_dir: Path, run_id: str) -> str | None:
    """Why the run's directory is not a plain directory inside runs/ (None: it is, or it does not
    exist yet). A symbolic link is refused: the run would read and write wherever it points.
    runs/ itself may be a link (to scratch space, say); what it holds may not."""
    path = run_dir(sweep_dir, run_id)
    if path.is_symlink():
        return f"{path} is a symbolic link (to {os.readlink(path)}): remove it, or move the run's files in"
    return None


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
