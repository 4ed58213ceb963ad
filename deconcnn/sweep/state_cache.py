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

The cache is written best-effort (atomically, errors ignored: status works on a read-only sweep
directory) and read forgivingly: a missing, corrupt or foreign cache file is ignored, an entry
that does not have the cache's form is dropped.
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
from deconcnn.runlog.run_status import (
    KEEP_STATUSES,
    LOG_BYTES,
    RUN_STATUS_FILE,
    checked_log,
    parse_status,
    read_checked_status,
    read_small_file_stat,
)

VERSION = 1
RACY_S = 2.0
#: What a kept run's state needs of its run.json (deconcnn.runlog.states.kept_state, the log check).
FIELDS = ("status", "diverged_step", LOG_BYTES)

Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _entry(value: Any) -> tuple[Identity, dict[str, Any]] | None:
    """A cache entry as read back: [identity..., status, diverged_step, log bytes]; None if malformed."""
    if not isinstance(value, list) or len(value) != 5 + len(FIELDS):
        return None
    ident, fields = value[:5], dict(zip(FIELDS, value[5:]))
    if not all(type(v) is int for v in ident) or fields["status"] not in KEEP_STATUSES:
        return None
    if not all(v is None or type(v) is int for v in value[6:]):
        return None
    return (ident[0], ident[1], ident[2], ident[3], ident[4]), fields


class RunStatusCache:
    """read_checked_status for the runs of one sweep directory, through its cache file."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = os.path.join(sweep_dir, RUN_STATES_CACHE)
        self.entries: dict[str, tuple[Identity, dict[str, Any]]] = {}
        self.changed = False
        try:
            data = json.loads(read_small_file_stat(self.path)[0])
            runs = data["runs"] if isinstance(data, dict) and data.get("version") == VERSION else {}
        except (OSError, ValueError, UnicodeDecodeError, KeyError):
            runs = {}
        if not isinstance(runs, dict):
            runs = {}
        for run_id, value in runs.items():
            entry = _entry(value)
            if entry is None:
                self.changed = True  # rewritten without it
            else:
                self.entries[run_id] = entry
        self.used: set[str] = set()

    def read(self, run_id: str, run_dir: str) -> dict[str, Any] | None:
        """read_checked_status(run_dir) of run `run_id`."""
        path = os.path.join(run_dir, RUN_STATUS_FILE)
        cached = self.entries.get(run_id)
        if cached is not None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError:
                return read_checked_status(run_dir)  # its own error line
            if identity(st) == cached[0]:
                self.used.add(run_id)
                return checked_log(run_dir, dict(cached[1]))
        try:
            text, st = read_small_file_stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return read_checked_status(run_dir)
        run = parse_status(text)
        if run["status"] in KEEP_STATUSES and time.time_ns() - st.st_ctime_ns > RACY_S * 1e9:
            fields = {key: run.get(key) for key in FIELDS}
            if all(v is None or type(v) is int for v in list(fields.values())[1:]):
                self.entries[run_id] = (identity(st), fields)
                self.used.add(run_id)
                self.changed = True
        return checked_log(run_dir, run)

    def save(self) -> None:
        """Write the entries read this time (atomically; any error ignored: the cache is only a cache)."""
        if not self.changed and self.used == self.entries.keys():
            return
        runs = {run_id: [*self.entries[run_id][0], *self.entries[run_id][1].values()] for run_id in self.used}
        with suppress(OSError):
            write_text_atomic(self.path, json.dumps({"version": VERSION, "runs": runs}), fsync=False)
