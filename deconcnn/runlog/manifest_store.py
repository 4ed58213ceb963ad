"""manifest.json on disk: reading it, with its submission log folded in, through a parsed copy
kept beside it (.manifest-parsed.json).

A 50,000-run manifest is 30 MB of JSON whose every entry is checked as it is built: 1.0-1.2 CPU-s
that status, cancel, collect and every relaunch paid, each time, for a file that changes only
when a launch rewrites it (a relaunch appends to the submission log instead). The copy holds each
run as one JSON list in the records' field order, so reading it is a parse of lists and a call of
each record's constructor (0.9 CPU-s at 50,004 runs against 1.2: benchmarks/README.md), and it is
made by whoever writes the manifest (SweepDir.write_manifest), so the first status after a launch
finds it.

The copy names the SHA-256 of the manifest.json bytes it was made from (0.03 s for 30 MB) and is
used only for those bytes: a stat identity would miss an edit in place within one timestamp tick
and would call a `cp -a` restore of the same file a change. The submission log is not in it: it
is read and folded in on every read, as before (it only grows between full writes, by the
launches since). What the copy holds was checked when the manifest was parsed; the run ids, on
which every path into runs/ rests, are checked again on every read. A copy that is missing,
corrupt, of another version or another manifest is ignored and made again; writing it is
best-effort (status works on a read-only sweep directory).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import Any

from deconcnn.runlog.atomic import write_bytes_atomic
from deconcnn.runlog.layout import MANIFEST_FILE, MANIFEST_PARSED, SUBMISSIONS_LOG, NotASweep, run_ids_problem
from deconcnn.runlog.records import (
    FORMAT_KEY,
    RESTORE,
    Manifest,
    NewerFormat,
    RecordError,
    RunEntry,
    RunSubmission,
    fold_submissions,
    gc_paused,
    read_submission_log,
)

VERSION = 1
# A record's fields in order, as they are (dataclasses.astuple copies every value deeply); a run
# entry's submissions last, each a list of its own fields.
_ENTRY_FIELDS = attrgetter(*RunEntry.__slots__[:-1])
_SUBMISSION_FIELDS = attrgetter(*RunSubmission.__slots__)


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(sweep_dir: Path) -> Manifest | None:
    """The manifest with its submission log folded in, None when there is none yet; NotASweep when
    either is unreadable."""
    path = Path(sweep_dir)
    if path.exists() and not path.is_dir():
        raise NotASweep(f"{path} is a file, not a sweep directory")
    manifest_path = path / MANIFEST_FILE
    # The log first: a launch folding it in (the manifest written whole, then the log removed)
    # between the two reads leaves its launches in the log read, the manifest read or both, and
    # folding skips what the manifest holds. Manifest first, a reader could get the old manifest
    # and no log: the folded launches missing.
    log_path = path / SUBMISSIONS_LOG
    log = read_submission_log(log_path)
    try:
        data = manifest_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise NotASweep(f"{manifest_path} is corrupt ({error}): {RESTORE}") from None
    digest = manifest_digest(data)
    with gc_paused():
        manifest = _load_parsed(path, digest)
        if manifest is None:
            manifest = _parse(manifest_path, data)
            save_parsed(path, digest, manifest)
    return fold_submissions(manifest, log, log_path) if log is not None else manifest


def _parse(manifest_path: Path, data: bytes) -> Manifest:
    try:
        return Manifest.from_json(json.loads(data.decode()), manifest_path.parent.name)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotASweep(f"{manifest_path} is corrupt ({error}): {RESTORE}") from None
    except NewerFormat as error:
        raise NotASweep(f"{manifest_path}: {error}") from None
    except RecordError as error:
        raise NotASweep(f"{manifest_path} is corrupt ({error}): restore it from a backup") from None


def save_parsed(sweep_dir: Path, digest: str, manifest: Manifest) -> None:
    """Keep `manifest`, parsed from manifest.json bytes of `digest`, beside it (best-effort)."""
    header = {**replace(manifest, runs={}).to_json(), FORMAT_KEY: manifest.format_version}
    runs = [[*_ENTRY_FIELDS(e), list(map(_SUBMISSION_FIELDS, e.submissions))] for e in manifest.runs.values()]
    document = {"version": VERSION, "manifest_sha256": digest, "header": header, "runs": runs}
    with suppress(OSError):
        write_bytes_atomic(os.path.join(sweep_dir, MANIFEST_PARSED), json.dumps(document).encode(), fsync=False)


def _load_parsed(sweep_dir: Path, digest: str) -> Manifest | None:
    try:
        with open(os.path.join(sweep_dir, MANIFEST_PARSED), "rb") as handle:
            document = json.loads(handle.read())
        if document["version"] != VERSION or document["manifest_sha256"] != digest:
            return None
        manifest = Manifest.from_json(document["header"], sweep_dir.name)
        listed = document["runs"]
        runs = {r[0]: RunEntry(r[0], r[1], tuple(r[2]), r[3], r[4], tuple(map(_submission, r[5]))) for r in listed}
    except (OSError, ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, RecordError):
        return None
    if run_ids_problem(runs):
        return None
    return replace(manifest, runs=runs)


def _submission(fields: list[Any]) -> RunSubmission:
    sid, executor, time, handle, job_id, pack, log = fields
    return RunSubmission(sid, executor, time, handle, job_id, tuple(pack), log)
