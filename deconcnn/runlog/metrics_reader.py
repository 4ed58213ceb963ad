"""Read a run's ``metrics.jsonl`` without ever failing on a damaged line.

One JSON object per line. A line that does not parse (a process killed mid-write leaves a
truncated last line; a crash and resume can leave one in the middle) is skipped and counted,
never raised. Python's ``json`` accepts ``NaN``/``Infinity`` tokens, so non-finite floats come
back as ``float('nan')``/``inf``; a writer that writes them as ``null`` gives ``None``.

No torch, no pyarrow: the writer (``metrics_log.py``) and the sweep layer both use this.

    reader = MetricsReader(path)
    for rec in reader.records():
        ...
    reader.bad_lines, reader.truncated_tail, reader.valid_end

``valid_end`` is the byte offset just past the last line that parsed: a writer resuming a run
can truncate the file there before appending (if the byte before it is not a newline, the last
record was complete but its newline was lost: write one first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BadLine", "MetricsReader", "iter_records"]

_DECODER = json.JSONDecoder()  # accepts NaN / Infinity / -Infinity


@dataclass(frozen=True)
class BadLine:
    lineno: int  # 1-based
    offset: int  # byte offset of the line's start
    reason: str
    at_eof: bool  # the last line in the file (or in the byte limit) with no newline


@dataclass
class MetricsReader:
    """Stream records from ``path``; counts what it skipped.

    ``max_bytes`` reads only that prefix of the file (a snapshot of a file being appended to: take
    the size from ``os.fstat`` and pass it, so what you read matches what you stat'ed). A missing
    file reads as empty. ``bad`` keeps the first ``keep_bad`` skipped lines for reporting.
    """

    path: str | os.PathLike[str]
    max_bytes: int | None = None
    keep_bad: int = 20
    bad_lines: int = field(default=0, init=False)
    bad: list[BadLine] = field(default_factory=list, init=False)
    truncated_tail: bool = field(default=False, init=False)
    n_records: int = field(default=0, init=False)
    valid_end: int = field(default=0, init=False)
    bytes_read: int = field(default=0, init=False)

    def records(self) -> Iterator[dict]:
        """Yield each line that parses to a JSON object. Restartable: counters reset per call."""
        self.bad_lines = self.n_records = self.valid_end = self.bytes_read = 0
        self.bad = []
        self.truncated_tail = False
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed in finally, generator
        except FileNotFoundError:
            return
        limit = self.max_bytes
        pos = 0
        lineno = 0
        decode = _DECODER.decode  # str in: skips json.loads' per-call encoding sniffing
        try:
            for line in f:
                lineno += 1
                if limit is not None and pos + len(line) > limit:
                    line = line[: max(0, limit - pos)]
                    if not line:
                        break
                start = pos
                pos += len(line)
                complete = line.endswith(b"\n")
                if not line.strip():
                    if complete:
                        self.valid_end = pos
                    continue
                try:
                    rec = decode(line.decode("utf-8"))
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    self._bad(lineno, start, f"{type(exc).__name__}: {exc}", not complete)
                else:
                    if isinstance(rec, dict):
                        self.n_records += 1
                        self.valid_end = pos
                        yield rec
                    else:
                        self._bad(lineno, start, f"not an object: {type(rec).__name__}", not complete)
                if limit is not None and pos >= limit:
                    break
        finally:
            f.close()
            self.bytes_read = pos

    def _bad(self, lineno: int, offset: int, reason: str, at_eof: bool) -> None:
        self.bad_lines += 1
        if at_eof:
            self.truncated_tail = True
        if len(self.bad) < self.keep_bad:
            self.bad.append(BadLine(lineno, offset, reason[:200], at_eof))


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict]:
    """Records of ``path``, damaged lines silently skipped (use MetricsReader to count them)."""
    return MetricsReader(Path(path)).records()
