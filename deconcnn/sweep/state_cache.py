"""The finished runs' run.json, cached per sweep: status and relaunch check 50,000 of them with a stat each.

A run.json that says completed or diverged is a result, and every writer replaces run.json by
renaming a new file over it (deconcnn.runlog.atomic), or rewrites it in place on a full disk. So
what such a file says is cached under its identity when it was read: (device, inode, size, mtime,
ctime). A file replaced, rewritten, edited or deleted since has another identity, or none, and is
read again. ctime cannot be set back (a restore with `cp -a` keeps mtime, not ctime); a file
whose ctime was less than RACY_S old when it was read is not cached, because a write in the same
timestamp tick could leave the identity as it was (git's "racy clean" entries). Only results are
cached, never a state that may still change (running, failed: those are read every time), and the
metric log of a completed run is stat'ed every time (read_checked_status's check), so a shortened
log is seen at once.

The cache is saved by `status` and by a launch that submits (a refused command writes nothing),
best-effort (atomically, errors ignored: status works on a read-only sweep directory), and read
forgivingly: a missing, corrupt or foreign cache file is ignored, an entry that does not have
the cache's form is read again.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from deconcnn.runlog.atomic import write_text_atomic
from deconcnn.runlog.layout import RUN_STATES_CACHE
from deconcnn.runlog.records import RunStatus
from deconcnn.runlog.run_status import (
    KEEP_STATUSES,
    RUN_STATUS_FILE,
    checked_log,
    parse_status,
    read_checked_status,
    read_small_file,
    read_small_file_stat,
)

VERSION = 1
RACY_S = 2.0
N_FIELDS = 3  # what a kept run's state needs of its run.json: _fields_of (kept_state, the log check)


def _identity(st: os.stat_result) -> list[int]:
    """What changes whenever run.json is replaced or rewritten (the module doc says why ctime)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _fields_of(run: RunStatus) -> list[Any]:
    return [run.status, run.diverged_step, run.metrics_log_bytes]


_INT_OR_NONE = frozenset((int, type(None)))


def _usable(entry: Any) -> bool:
    """An entry as read back has the cache's form: [identity..., status, diverged_step, log bytes]
    of a kept status (checked when used: status reads 50,000)."""
    return (
        type(entry) is list
        and len(entry) == 5 + N_FIELDS
        and entry[5] in KEEP_STATUSES
        and set(map(type, entry[6:])) <= _INT_OR_NONE  # not all(... for ...): 0.2 s of generators at 50,000
    )


class RunStatusCache:
    """read_checked_status for the runs of one sweep directory, through its cache file."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = os.path.join(sweep_dir, RUN_STATES_CACHE)
        self.entries: dict[str, Any] = {}  # run id -> [identity..., fields...], unchecked until used
        self.used: dict[str, list[Any]] = {}  # the entries read or made this time: the next cache
        try:
            data = json.loads(read_small_file(self.path))
        except (OSError, ValueError, UnicodeDecodeError):
            return
        if isinstance(data, dict) and data.get("version") == VERSION and isinstance(data.get("runs"), dict):
            self.entries = data["runs"]

    def read(self, run_id: str, run_dir: str) -> RunStatus | None:
        """read_checked_status(run_dir) of run `run_id`."""
        path = f"{run_dir}/{RUN_STATUS_FILE}"
        cached = self.entries.get(run_id)
        if cached is not None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError:
                return read_checked_status(run_dir)  # its own error line
            if _usable(cached) and cached[:5] == _identity(st):
                status, diverged_step, log_bytes = cached[5:]
                run = RunStatus(status, run_id, diverged_step=diverged_step, metrics_log_bytes=log_bytes)
                if checked_log(run_dir, run) is run:
                    self.used[run_id] = cached
                    return run
                # Its log is missing or short: the run is no longer kept, and what decides its state
                # (which attempt wrote run.json, its process) is in the whole file.
                return read_checked_status(run_dir)
        try:
            text, st = read_small_file_stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return read_checked_status(run_dir)
        run = parse_status(text)
        if run.status in KEEP_STATUSES and time.time_ns() - st.st_ctime_ns > RACY_S * 1e9:
            entry = [*_identity(st), *_fields_of(run)]
            if _usable(entry):
                self.used[run_id] = entry
        return checked_log(run_dir, run)

    def save(self) -> None:
        """Write the entries read this time (atomically; any error ignored: the cache is only a cache)."""
        if self.used == self.entries:
            return
        with suppress(OSError):
            write_text_atomic(self.path, json.dumps({"version": VERSION, "runs": self.used}), fsync=False)
