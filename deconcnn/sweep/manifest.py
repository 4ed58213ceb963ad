"""The sweep directory: manifest.json (runs, submissions, attempts) and the launch lock.

Layout: <out>/<sweep name>/{manifest.json, .lock, runs/<run_id>/, slurm/, check.json, probe.json}.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconcnn.runlog.atomic import write_json_atomic

if TYPE_CHECKING:  # grid imports Hydra, which status does not need
    from deconcnn.sweep.grid import RunSpec, Sweep

DEFAULT_OUT = "results"  # parent of sweep directories
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"


class SweepLocked(RuntimeError):
    """Another launch of the same sweep holds the lock."""


class SweepChanged(ValueError):
    """The sweep file no longer expands to the runs this sweep directory was launched with."""


@dataclass
class SweepDir:
    path: Path

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive for the whole launch: two launches of one sweep cannot double-submit."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise SweepLocked(f"another launch of this sweep is running ({holder})") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def is_locked(self) -> bool:
        try:
            with open(self.path / LOCK_FILE, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False
        except BlockingIOError:
            return True
        except FileNotFoundError:
            return False


def new_manifest(sweep: Sweep, code_version: str) -> dict[str, Any]:
    return {
        "sweep": sweep.name,
        "sweep_file": str(sweep.path.resolve()),
        "fingerprint": sweep.fingerprint(),
        "code_version": code_version,
        "created": time.time(),
        "runs": {run.run_id: {**run.to_json(), "attempts": 0, "submissions": []} for run in sweep.runs},
        "submissions": [],
    }


def describe_changes(manifest: dict[str, Any], runs: list[RunSpec]) -> str | None:
    """None if the sweep still expands to the manifest's runs, else a one-line summary of the change."""
    old = {run_id: entry["overrides"] for run_id, entry in manifest["runs"].items()}
    new = {run.run_id: list(run.overrides) for run in runs}
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
    if not (added or removed or changed):
        return None
    parts = []
    for label, ids in (("added", added), ("removed", removed), ("changed overrides", changed)):
        if ids:
            parts.append(f"{len(ids)} {label} (e.g. {ids[0]})")
    return "; ".join(parts)


def code_version() -> str:
    """Hash of the package's code and configs: a check passed on other code does not count."""
    import deconcnn
    from deconcnn.runconfig import CONF_DIR

    digest = hashlib.sha256()
    for root in (Path(deconcnn.__file__).parent, CONF_DIR):
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
