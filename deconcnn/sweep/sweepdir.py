"""The sweep directory: the name of every file in it, the manifest, the launch lock, cancellations.

    <out>/<sweep name>/
        manifest.json   the runs (id, variant, overrides, params), every submission, attempts
        .lock           held by the launch that is writing the manifest (local: while it runs)
        cancel.jsonl    one line per `cancel` or Ctrl-C: when, which runs, by what
        submitting.jsonl  the SLURM submission in flight (deconcnn.sweep.journal); gone once recorded
        runs/<run_id>/  each run's own files (deconcnn.runlog)
        slurm/<submission>-<i>/  submitit's script and task logs of each array (older sweeps: slurm/ itself)
        check/ check.json probe.json collected/ report/ analysis/

No torch and no Hydra here: status reads a sweep directory in a fraction of a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.sweep import processes
from deconcnn.sweep.errors import SweepError

DEFAULT_OUT = "results"  # parent of sweep directories
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
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


#: A Hydra multirun directory (`deconcnn-train -m ...`): this file, and one directory per job
#: holding `.hydra/overrides.yaml`.
MULTIRUN_FILE = "multirun.yaml"
HYDRA_DIR = ".hydra"
HYDRA_OVERRIDES = "overrides.yaml"
HYDRA_CONFIG = "config.yaml"


def is_multirun(path: Path) -> bool:
    """A Hydra multirun directory, and not a sweep directory (which has a manifest)."""
    return (Path(path) / MULTIRUN_FILE).is_file() and not (Path(path) / MANIFEST_FILE).is_file()


def multirun_jobs(path: Path) -> list[Path]:
    """The job directories of a Hydra multirun directory, in job number order."""
    return sorted(
        (p for p in Path(path).iterdir() if (p / HYDRA_DIR / HYDRA_OVERRIDES).is_file()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )


class SweepLocked(SweepError):
    """Another live launch of the same sweep holds the lock."""


class SweepChanged(SweepError):
    """The sweep file no longer expands to the runs this sweep directory was launched with."""


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


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Why a manifest's runs cannot be trusted to name directories under runs/ (None: they can)."""
    for run_id, entry in manifest["runs"].items():
        problem = run_id_problem(run_id)
        if problem:
            return problem
        if not isinstance(entry, dict) or entry.get("run_id", run_id) != run_id:
            return f"the entry of run {run_id} is not a run of that id"
        if not isinstance(entry.get("variant"), str) or not isinstance(entry.get("submissions", []), list):
            return f"the entry of run {run_id} has no variant or a malformed submissions list"
        for submission in entry.get("submissions", []):
            pack = submission.get("pack", []) if isinstance(submission, dict) else None
            if not isinstance(pack, list) or any(not isinstance(r, str) or r not in manifest["runs"] for r in pack):
                return f"a submission of run {run_id} names runs the manifest does not hold"
    return None


@dataclass
class SweepDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    def run_dir(self, run_id: str) -> Path:
        """`runs/<run_id>`, the one place a run's directory is named; a run id that is not one plain
        directory name (run_id_problem) is refused, so no run's files land outside runs/."""
        return Path(self.run_path(run_id))

    def run_path(self, run_id: str) -> str:
        """run_dir as text, for loops over every run (status: building a Path costs more than using it)."""
        problem = run_id_problem(run_id)
        if problem:
            raise UnsafeRunDir(problem)
        return os.path.join(self.path, RUNS_DIR, run_id)

    def run_dir_problem(self, run_id: str) -> str | None:
        """Why the run's directory is not a plain directory inside runs/ (None: it is, or it does not
        exist yet). A symbolic link is refused: the run would read and write wherever it points.
        runs/ itself may be a link (to scratch space, say); what it holds may not."""
        run_dir = self.run_dir(run_id)
        if run_dir.is_symlink():
            return f"{run_dir} is a symbolic link (to {os.readlink(run_dir)}): remove it, or move the run's files in"
        return None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def slurm_dir(self) -> Path:
        return self.path / SLURM_DIR

    @property
    def check_dir(self) -> Path:
        return self.path / CHECK_DIR

    @property
    def check_file(self) -> Path:
        return self.path / CHECK_FILE

    @property
    def probe_file(self) -> Path:
        return self.path / PROBE_FILE

    @property
    def cancel_path(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL_FILE

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None when there is none yet; NotASweep when it is unreadable."""
        if self.path.exists() and not self.path.is_dir():
            raise NotASweep(f"{self.path} is a file, not a sweep directory")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise NotASweep(
                f"{self.manifest_path} is corrupt ({error}): restore it from a backup, or "
                "launch the sweep file again under another --out"
            ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), dict):
            raise NotASweep(f"{self.manifest_path} is corrupt (no 'runs' mapping)")
        problem = _manifest_problem(manifest)
        if problem:
            raise NotASweep(f"{self.manifest_path} is corrupt ({problem}): restore it from a backup")
        return manifest

    def require_manifest(self) -> dict[str, Any]:
        manifest = self.read_manifest()
        if manifest is None:
            raise NotASweep(f"{self.path} is not a sweep directory (no {MANIFEST_FILE}): launch it first")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive for the whole launch: two launches of one sweep cannot double-submit. The
        kernel drops the lock when its holder dies, so a dead holder never blocks a relaunch."""
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
            me = processes.identity()
            handle.write(f"pid {me['pid']} on {me['host']}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def launch_live(self) -> bool:
        """A launch of this sweep holds its lock now: a local launch while its runs run, any launch
        while it validates and submits. Read from the kernel's lock table (/proc/locks), never by
        taking the lock, which would refuse a launch starting at that moment; a lock held on another
        host of a shared filesystem is not in this host's table."""
        try:
            st = (self.path / LOCK_FILE).stat()
            table = Path("/proc/locks").read_text()
        except OSError:
            return False
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        return any(inode in line.split() for line in table.splitlines())

    # ---- cancellations: appended without the lock, which a local launch holds while it runs

    def record_cancel(self, run_ids: Sequence[str], by: str) -> float:
        """Append one cancellation (O_APPEND writes of one line do not interleave); returns its time."""
        now = time.time()
        line = json.dumps({"time": now, "runs": list(run_ids), "by": by}) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cancel_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return now

    def cancellations(self) -> dict[str, tuple[float, str]]:
        """Latest (time, by) of each cancelled run; damaged lines are skipped."""
        out: dict[str, tuple[float, str]] = {}
        try:
            lines = self.cancel_path.read_text().splitlines()
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
