"""The sweep directory, as the sweep layer writes it: the manifest, the launch lock, cancellations.

Its files' names and the readers analysis shares: deconcnn.runlog.layout. No torch and no Hydra
here: status reads a sweep directory in a fraction of a second.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deconcnn.backends import processes
from deconcnn.runlog import layout
from deconcnn.runlog.atomic import fsync_dir, json_text_by_line, write_bytes_atomic
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import (
    CANCEL_FILE,
    CHECK_DIR,
    CHECK_FILE,
    JOURNAL_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    PROBE_FILE,
    RUNS_DIR,
    SLURM_DIR,
    SUBMISSIONS_LOG,
    NotASweep,
    read_cancellations,
)
from deconcnn.runlog.manifest_store import manifest_digest, read_manifest, save_parsed
from deconcnn.runlog.records import (
    LaunchRecord,
    Manifest,
    RunSubmission,
    complete_lines,
    submission_line,
)

#: A launch appends to the submission log until the log reaches this share of the manifest's size;
#: then it rewrites the manifest with the log folded in (and the log goes): every reader parses
#: the log's lines, and a relaunch of 5% of a sweep appends ~5% of its manifest's size.
LOG_SHARE = 0.25


class SweepLocked(SweepError):
    """Another live launch of the same sweep holds the lock."""


class SweepChanged(SweepError):
    """The sweep file no longer expands to the runs this sweep directory was launched with."""


@dataclass
class SweepDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    def run_dir(self, run_id: str) -> Path:
        """`runs/<run_id>`; UnsafeRunDir for a run id that is not one plain directory name."""
        return layout.run_dir(self.path, run_id)

    def run_dir_problem(self, run_id: str) -> str | None:
        """Why the run's directory is not a plain directory inside runs/ (a symbolic link), None if it is."""
        return layout.run_dir_problem(self.path, run_id)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def log_path(self) -> Path:
        return self.path / SUBMISSIONS_LOG

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

    def read_manifest(self) -> Manifest | None:
        """The manifest, None when there is none yet; NotASweep when it is unreadable."""
        return read_manifest(self.path)

    def require_manifest(self) -> Manifest:
        manifest = self.read_manifest()
        if manifest is None:
            raise NotASweep(f"{self.path} is not a sweep directory (no {MANIFEST_FILE}): launch it first")
        return manifest

    def write_manifest(self, manifest: Manifest) -> None:
        """Replace the manifest (atomically) with one that holds every launch, then empty the
        submission log: killed in between, the log's launches are the manifest's, skipped when read.
        Then its parsed copy (manifest_store), so that the manifest's first reader finds it: after the
        manifest, which must not wait for the disk space the copy takes."""
        data = json_text_by_line(manifest.to_json(), "runs").encode()
        write_bytes_atomic(self.manifest_path, data)
        self.log_path.unlink(missing_ok=True)
        save_parsed(self.path, manifest_digest(data), manifest)

    def record_launch(self, manifest: Manifest, record: LaunchRecord, packs: Sequence[RunSubmission]) -> None:
        """Record a launch and the packs it submitted in `manifest`, the sweep's manifest as read
        under the launch lock: one fsync'ed line appended to the submission log (50,000 entries
        left as they are), or, with no manifest.json yet or a log grown to LOG_SHARE of it, the
        manifest written whole."""
        try:
            size = self.manifest_path.stat().st_size
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        except FileNotFoundError:
            size, logged = 0, 0
        if not size or logged > LOG_SHARE * size:
            self.write_manifest(manifest.with_submission(record, [(p.pack, p) for p in packs]))
            return
        fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if logged and os.pread(fd, 1, logged - 1) != b"\n":  # a killed launch's torn line: no record
                os.ftruncate(fd, complete_lines(os.pread(fd, logged, 0)))
            os.write(fd, submission_line(record, packs))
            os.fsync(fd)
        finally:
            os.close(fd)
        if not logged:
            fsync_dir(self.path)  # the new file's name is durable too

    def written(self) -> tuple[tuple[int, ...], ...]:
        """The identity of the manifest and its submission log: the manifest is replaced by a rename
        (a new inode) whenever it is written, the log grows; () for a file that is not there."""
        out: list[tuple[int, ...]] = []
        for path in (self.manifest_path, self.log_path):
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):  # none yet; read_manifest says what is wrong
                out.append(())
                continue
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

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
            handle.write(f"pid {me.pid} on {me.host}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
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
        return read_cancellations(self.path)


@functools.cache  # 0.1 CPU-s a hash, asked several times by one launch; the code a process runs is fixed
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
