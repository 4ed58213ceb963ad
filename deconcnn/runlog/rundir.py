"""The run directory a training process started in, and the error for when it is no longer there.

A run directory deleted by hand or by a scratch purge mid-run must not come back: a writer that
re-creates it (a checkpoint's `mkdir -p`, a fresh run.json) would leave a directory whose run.json
says completed over a run whose metric log is gone. So the process holds the directory open from its
start, checks its device and inode before every checkpoint and run.json, and writes them through
that descriptor; a directory that vanished or was replaced (same path, new inode) fails the run
instead, even when it goes between the check and the write.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFilesLost(RuntimeError):
    """The run's directory or metric log was deleted or replaced under it: nothing more is written."""


class RunDirIdentity:
    """Device and inode of a run directory when the run started; `check` raises RunFilesLost once
    the path no longer names that directory.

    `fd` holds the directory open: a file written relative to it (`atomic.atomic_file`'s
    `dir_fd`) can only land in the run's own directory. A check of the path and a write by path
    race with an `rm -rf` (it deletes file by file, then the directory) and with a path made
    again after it; through `fd` the write into a deleted directory fails (ENOENT) instead.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        weakref.finalize(self, os.close, self.fd)
        st = os.fstat(self.fd)
        self.key = (st.st_dev, st.st_ino)

    def gone(self) -> str | None:
        """Why the path is not the run's directory any more; None while it is."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the run directory {self.path} was deleted mid-run"
        if (st.st_dev, st.st_ino) != self.key:
            return f"the run directory {self.path} was replaced mid-run (deleted and created again)"
        return None

    def check(self) -> None:
        reason = self.gone()
        if reason:
            raise RunFilesLost(f"{reason}: nothing more is written there; a relaunch starts the run over")

    @contextmanager
    def writing(self) -> Iterator[int]:
        """The descriptor to write through (`dir_fd`), after a check; a FileNotFoundError inside
        means the directory was deleted since the check (rm -rf deletes it last): RunFilesLost."""
        self.check()
        try:
            yield self.fd
        except FileNotFoundError:
            self.check()
            raise
