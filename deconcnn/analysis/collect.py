"""Collect a sweep's per-run logs into long tables: one per record kind, plus one row per run.

    result = collect("results/loss_lin_slope")             # -> <sweep>/collected/train.parquet, ...
    result = collect(sweep_dir, fmt="csv", out="/tmp/x")    # CSV instead, elsewhere

Reads a sweep directory or a Hydra multirun directory (deconcnn.analysis.sources). Every table
starts with the run's identity: ``run_id``, ``variant``, one column per axis of the sweep under
its own name (``optim.lr``, ``optim.weight_decay``, ``seed``, ``model.width``, ...), ``status``
(the state the run's files record: deconcnn.runlog.states) and ``complete`` (status == completed). Written under
``out`` (default ``<sweep>/collected``):

- ``<kind>.parquet|csv`` for every record kind of the schema (deconcnn.runlog.schema; any other
  kind seen too): the identity, then ``step, epoch, epoch_frac, time`` and the record's keys
  under their own names (the ``kind`` key is the file name). A record key equal to an identity
  column gets ``_logged`` appended.
- ``runs.parquet|csv``: one row per run, runs listed but never started too (``has_dir`` false),
  with what its run.json says (attempt, times, host, SLURM job id, error, ``data``: what it trained on).
- ``.cache/<run_id>/``: per-run parquet pieces keyed by (size, mtime_ns) of metrics.jsonl and
  run.json; a re-collect parses only runs whose files changed and re-assembles the tables from
  the pieces (or keeps them when nothing, identity and states included, changed).

Memory is bounded by one run: pieces are written per run and the tables are assembled one run
(one row group) at a time with a schema unified over all pieces (union of keys; int+float ->
float; anything else mixed -> string). Output files are written to a temporary name and renamed,
so a reader never sees half a table. Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deconcnn.analysis.sources import RunInfo, SweepSource, read_source
from deconcnn.runlog import schema
from deconcnn.runlog.atomic import tmp_path, write_text_atomic
from deconcnn.runlog.layout import COLLECTED_DIR
from deconcnn.runlog.metrics_log import METRICS_FILE
from deconcnn.runlog.metrics_reader import MetricsReader
from deconcnn.runlog.records import RecordError, RunStatus
from deconcnn.runlog.run_status import RUN_STATUS_FILE

__all__ = ["CollectResult", "collect", "identity_fields"]

CACHE_VERSION = 4
FORMATS = ("parquet", "csv")
CACHE_DIR = ".cache"
_ARROW = {schema.FLOAT: pa.float64(), schema.INT: pa.int64(), schema.STR: pa.string(), schema.BOOL: pa.bool_()}
KNOWN_TYPES: dict[str, pa.DataType] = {
    **{k.name: _ARROW[k.type] for k in schema.STAMPS},
    **{k.name: _ARROW[k.type] for kind in schema.KINDS.values() for k in kind.keys},
}
BASE_COLUMNS = tuple(k for k in schema.STAMP_NAMES if k != schema.KIND_KEY)
RUN_FACTS: list[tuple[str, pa.DataType]] = [
    ("reason", pa.string()),
    ("in_manifest", pa.bool_()),
    ("has_dir", pa.bool_()),
    ("overrides", pa.string()),
    ("attempt", pa.int64()),
    ("host", pa.string()),
    ("slurm_job_id", pa.string()),
    ("error", pa.string()),
    ("data", pa.string()),  # what the run trained on, as it said (run.json): SYNTHETIC data is marked
    ("start_time", pa.float64()),
    ("end_time", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("last_step", pa.int64()),
    ("diverged_step", pa.int64()),
    ("first_nonfinite_step", pa.int64()),
    ("steps_logged", pa.int64()),
    ("max_step", pa.int64()),
    ("max_epoch_frac", pa.float64()),
    *[(f"n_{k}", pa.int64()) for k in schema.KINDS],
    ("n_records", pa.int64()),
    ("final_loss_train_nats", pa.float64()),
    ("final_loss_val_nats", pa.float64()),
    ("final_acc_val", pa.float64()),
    ("final_epoch_frac", pa.float64()),
    ("best_loss_val_nats", pa.float64()),
    ("best_epoch_frac", pa.float64()),
    ("best_step", pa.int64()),
    ("best_acc_val", pa.float64()),
    ("n_bad_lines", pa.int64()),
    ("truncated_tail", pa.bool_()),
    ("from_cache", pa.bool_()),
]

_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The RunStatus fields (run.json) that are columns of runs.parquet, under the same names.
_RUN_JSON_KEYS = (
    "attempt",
    "start_time",
    "end_time",
    "last_step",
    "diverged_step",
    "host",
    "slurm_job_id",
    "error",
    "data",
)


def axis_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def identity_fields(source: SweepSource) -> list[tuple[str, pa.DataType]]:
    """run_id, variant, every axis under its own name (typed by its values), status, complete."""
    axes = [(a, axis_type([r.params.get(a) for r in source.runs])) for a in source.axes]
    return [("run_id", pa.string()), ("variant", pa.string()), *axes, ("status", pa.string()), ("complete", pa.bool_())]


def _identity_values(run: RunInfo, fields: list[tuple[str, pa.DataType]]) -> dict[str, Any]:
    values = {"run_id": run.run_id, "variant": run.variant, "status": run.state, "complete": run.state == "completed"}
    for name, arrow in fields:
        if name not in values:
            value = run.params.get(name)
            values[name] = str(value) if value is not None and pa.types.is_string(arrow) else value
    return values


@dataclass
class CollectResult:
    """What one ``collect`` call did. ``rows`` has one entry per table written (``"runs"`` too)."""

    sweep_dir: Path
    out_dir: Path
    fmt: str
    sweep_name: str
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    runs_total: int = 0
    runs_read: list[str] = field(default_factory=list)  # parsed this call
    runs_cached: list[str] = field(default_factory=list)  # taken from .cache unchanged
    runs_missing: list[str] = field(default_factory=list)  # in the manifest, no run directory
    bad_lines: dict[str, int] = field(default_factory=dict)  # run_id -> lines skipped (> 0 only)
    truncated: list[str] = field(default_factory=list)  # runs whose last line was cut off
    status_counts: dict[str, int] = field(default_factory=dict)
    assembled: bool = True  # False: nothing changed, the existing tables were kept
    seconds: float = 0.0
    source: SweepSource | None = None

    def summary(self) -> str:
        """A few human-readable lines for a CLI to print."""
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.status_counts.items()))
        lines = [
            f"sweep {self.sweep_name}: {self.runs_total} runs ({statuses})",
            f"read {len(self.runs_read)} runs, {len(self.runs_cached)} from cache"
            + ("" if self.assembled else "; tables unchanged")
            + f", {self.seconds:.1f} s",
        ]
        for kind, path in self.files.items():
            lines.append(f"  {kind:<11} {self.rows.get(kind, 0):>10} rows  {path}")
        if self.bad_lines:
            total = sum(self.bad_lines.values())
            lines.append(
                f"skipped {total} unreadable lines in {len(self.bad_lines)} runs"
                f" ({len(self.truncated)} truncated last lines)"
            )
        return "\n".join(lines)


def _nz(v: float | int | None) -> float:
    return math.inf if v is None else float(v)


def _float(v: Any) -> float | None:
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int | None:
    try:
        if v is None or isinstance(v, bool):
            return None
        f = float(v)
        return int(f) if f.is_integer() else None
    except (TypeError, ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- one run -> pieces


def _file_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _run_key(run_dir: Path) -> dict[str, Any]:
    return {
        "v": CACHE_VERSION,
        "metrics": _file_key(run_dir / METRICS_FILE),
        "run_json": _file_key(run_dir / RUN_STATUS_FILE),
    }


def _cached_summary(run_dir: Path, cache_dir: Path) -> dict[str, Any] | None:
    """The cached summary if the run's files are unchanged since it was made, else None."""
    try:
        key = json.loads((cache_dir / "key.json").read_text())
        if key != _run_key(run_dir):
            return None
        return json.loads((cache_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _column(name: str, values: list[Any]) -> pa.Array:
    known = KNOWN_TYPES.get(name)
    if known is not None:
        try:
            return pa.array(values, type=known)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
    try:
        arr = pa.array(values)
        if not (pa.types.is_nested(arr.type) or pa.types.is_binary(arr.type)):
            return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], type=pa.string())


def _record_name(key: str, identity: set[str]) -> str:
    return f"{key}_logged" if key in identity else key


def _process_run(run_id: str, run_dir: str, cache_dir: str) -> dict[str, Any]:
    """Parse one run into ``cache_dir/<kind>.parquet`` pieces + ``summary.json``; return summary."""
    rdir, cdir = Path(run_dir), Path(cache_dir)
    key = _run_key(rdir)
    info: dict[str, Any] = {k: None for k in _RUN_JSON_KEYS}
    rj_error = None
    try:
        with open(rdir / RUN_STATUS_FILE, "rb") as f:
            run = RunStatus.from_json(json.load(f))
        info.update({k: getattr(run, k) for k in _RUN_JSON_KEYS})
    except FileNotFoundError:
        rj_error = "no run.json"
    except RecordError as exc:
        rj_error = f"run.json: {exc}"
    except (OSError, ValueError) as exc:
        rj_error = f"run.json unreadable: {exc}"

    # Columns per kind: {kind: (n_rows, {column: values})}. A column first seen at row i is
    # back-filled with i Nones; a row lacking a column gets a None.
    tables: dict[str, list[Any]] = {}
    size = key["metrics"][0] if key["metrics"] else None
    reader = MetricsReader(rdir / METRICS_FILE, max_bytes=size)
    n_nokind = 0
    for rec in reader.records():
        kind = rec.pop("kind", None)
        slot = tables.get(kind)
        if slot is None:
            if not isinstance(kind, str) or not _KIND_RE.match(kind):
                n_nokind += 1
                continue
            slot = tables[kind] = [0, {}]
        n, cols = slot
        for k, v in rec.items():
            lst = cols.get(k)
            if lst is None:
                lst = cols[k] = [None] * n
            lst.append(v)
        n += 1
        slot[0] = n
        if len(rec) < len(cols):
            for lst in cols.values():
                if len(lst) < n:
                    lst.append(None)

    summary: dict[str, Any] = {"run_id": run_id, **info, "run_json_error": rj_error}
    summary.update(_stats(tables))
    summary["n_bad_lines"] = reader.bad_lines + n_nokind
    summary["n_records_without_kind"] = n_nokind
    summary["truncated_tail"] = reader.truncated_tail
    summary["bad"] = [{"lineno": b.lineno, "reason": b.reason, "at_eof": b.at_eof} for b in reader.bad]
    summary["key"] = key

    # Write the pieces: invalidate first, key last, so a crash leaves a cache that re-reads.
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "key.json").unlink(missing_ok=True)
    for old in cdir.glob("*.parquet"):
        old.unlink()
    kinds = {}
    for kind, (n, cols) in tables.items():
        if n == 0:
            continue
        table = pa.table([_column(nm, v) for nm, v in cols.items()], names=list(cols))
        tmp = tmp_path(cdir / f"{kind}.parquet")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, cdir / f"{kind}.parquet")
        kinds[kind] = n
    summary["kinds"] = kinds
    _write_json(cdir / "summary.json", summary)
    _write_json(cdir / "key.json", key)
    summary["from_cache"] = False
    return summary


def _stats(tables: dict[str, list[Any]]) -> dict[str, Any]:
    """Per-run numbers for runs.parquet, computed from the parsed columns."""
    out: dict[str, Any] = {}
    steps_max = [_nanmax(cols.get("step")) for _n, cols in tables.values()]
    efs_max = [_nanmax(cols.get("epoch_frac")) for _n, cols in tables.values()]
    out["max_step"] = _int(max((s for s in steps_max if s is not None), default=None))
    out["max_epoch_frac"] = max((e for e in efs_max if e is not None), default=None)

    n_train, tr = tables.get("train", [0, {}])
    out["steps_logged"] = n_train
    out["final_loss_train_nats"] = None
    out["first_nonfinite_step"] = None
    if n_train and "loss_train_nats" in tr:
        steps = tr.get("step", [None] * n_train)
        losses = tr["loss_train_nats"]
        last = _last_index(steps)
        out["final_loss_train_nats"] = _float(losses[last])
        bad = ~np.isfinite(_floats(losses)) & np.isfinite(st := _floats(steps))
        out["first_nonfinite_step"] = _int(float(st[bad].min())) if bad.any() else None

    n_val, va = tables.get("val", [0, {}])
    for k in (
        "final_loss_val_nats",
        "final_acc_val",
        "final_epoch_frac",
        "best_loss_val_nats",
        "best_epoch_frac",
        "best_step",
        "best_acc_val",
    ):
        out[k] = None
    if n_val:
        steps = va.get("step", [None] * n_val)
        loss = va.get("loss_val_nats", [None] * n_val)
        acc = va.get("acc_val", [None] * n_val)
        ef = va.get("epoch_frac", [None] * n_val)
        last = _last_index(steps)
        out["final_loss_val_nats"] = _float(loss[last])
        out["final_acc_val"] = _float(acc[last])
        out["final_epoch_frac"] = _float(ef[last])
        good = [i for i, v in enumerate(loss) if schema.is_finite(v)]
        if good:
            b = min(good, key=lambda i: (loss[i], _nz(_float(steps[i]))))
            out["best_loss_val_nats"] = float(loss[b])
            out["best_epoch_frac"] = _float(ef[b])
            out["best_step"] = _int(steps[b])
        accs = [a for a in acc if schema.is_finite(a)]
        out["best_acc_val"] = float(max(accs)) if accs else None
    return out


def _floats(values: list[Any] | None) -> np.ndarray:
    """Numbers as float64; None, strings and other non-numbers become NaN."""
    if not values:
        return np.array([], dtype=float)
    try:
        return np.array(values, dtype=float)  # None -> nan
    except (TypeError, ValueError):
        return np.array([float(v) if schema.is_finite(v) else np.nan for v in values], dtype=float)


def _nanmax(values: list[Any] | None) -> float | None:
    a = _floats(values)
    a = a[np.isfinite(a)]
    return float(a.max()) if len(a) else None


def _last_index(steps: list[Any]) -> int:
    """Index of the record with the largest step (the latest in the file on ties)."""
    a = _floats(steps)
    ok = np.flatnonzero(np.isfinite(a))
    if not len(ok):
        return len(steps) - 1
    top = a[ok].max()
    return int(ok[a[ok] == top][-1])


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, sort_keys=True), fsync=False)  # a cache: rebuilt if lost


def reuse_or_build(
    record_path: Path, digest: str, files: dict[str, Path], build: Callable[[], dict[str, int]]
) -> tuple[dict[str, int], bool]:
    """(rows by table, whether built): the tables `files` as they are when the record at
    `record_path` says they were made from inputs of this `digest`, else made anew by `build`, and
    the tables of kinds no longer made removed. The record goes first, so tables cut short by a
    kill are never taken for current."""
    try:
        prev = json.loads(record_path.read_text())
    except (OSError, ValueError):
        prev = {}
    if prev.get("digest") == digest and all(p.exists() for p in files.values()):
        return {k: int(v) for k, v in prev.get("rows", {}).items()}, False
    record_path.unlink(missing_ok=True)
    rows = build()
    for old in prev.get("files", []):  # tables of kinds that are gone
        if Path(old) not in files.values():
            Path(old).unlink(missing_ok=True)
    _write_json(record_path, {"digest": digest, "rows": rows, "files": [str(p) for p in files.values()]})
    return rows, True


# --------------------------------------------------------------------------- assembly


def unify_type(name: str, types: set[pa.DataType]) -> pa.DataType:
    ts = {t for t in types if not pa.types.is_null(t)}
    known = KNOWN_TYPES.get(name)
    if not ts:
        return known or pa.string()
    if all(pa.types.is_integer(t) for t in ts):
        return known if known in (pa.float64(), pa.int64()) else pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in ts):
        return pa.float64()
    if all(pa.types.is_boolean(t) for t in ts):
        return pa.bool_()
    return pa.string()


def _identity_arrays(values: dict[str, Any], fields: list[tuple[str, pa.DataType]], n: int) -> list[pa.Array]:
    return [pa.repeat(pa.scalar(values[name], type=t), n) for name, t in fields]


class TableWriter:
    """Parquet or CSV, streamed one table (= one run) at a time, renamed into place on close."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: str):
        self.path, self.tmp = path, tmp_path(path)
        if fmt == "parquet":
            self._w = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        else:
            self._w = pacsv.CSVWriter(self.tmp, schema)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._w.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._w.close()
        os.replace(self.tmp, self.path)


def _assemble_kind(
    pieces: list[tuple[RunInfo, Path]],
    identity: list[tuple[str, pa.DataType]],
    path: Path,
    fmt: str,
    advance: Callable[[], None],
) -> int:
    names = {name for name, _ in identity}
    order: dict[str, set[pa.DataType]] = {c: set() for c in BASE_COLUMNS}
    for _run, piece in pieces:
        for f in pq.read_schema(piece):
            order.setdefault(f.name, set()).add(f.type)
    data_fields = [pa.field(c, unify_type(c, ts)) for c, ts in order.items()]
    table_schema = pa.schema(
        [pa.field(n, t) for n, t in identity] + [pa.field(_record_name(f.name, names), f.type) for f in data_fields]
    )
    writer = TableWriter(path, table_schema, fmt)
    try:
        for run, piece in pieces:
            t = pq.ParquetFile(piece).read()  # read_table's dataset layer costs 4x as much per small file
            cols = _identity_arrays(_identity_values(run, identity), identity, t.num_rows)
            for f in data_fields:
                if f.name in t.column_names:
                    c = t.column(f.name)
                    cols.append(c if c.type == f.type else c.cast(f.type))
                else:
                    cols.append(pa.nulls(t.num_rows, f.type))
            writer.write(pa.Table.from_arrays(cols, schema=table_schema))
            advance()
    finally:
        writer.close()
    return writer.rows


def _runs_rows(
    runs: list[RunInfo], summaries: dict[str, dict[str, Any]], identity: list[tuple[str, pa.DataType]]
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = summaries.get(run.run_id)
        row: dict[str, Any] = {name: None for name, _ in RUN_FACTS}
        row.update(
            _identity_values(run, identity),
            reason=run.reason,
            in_manifest=run.in_manifest,
            has_dir=run.run_dir is not None,
            overrides=" ".join(run.overrides) if run.overrides is not None else None,
        )
        if s is None:
            row.update(
                n_bad_lines=0,
                truncated_tail=False,
                n_records=0,
                steps_logged=0,
                from_cache=False,
                **{f"n_{k}": 0 for k in schema.KINDS},
            )
        else:
            for k, _ in RUN_FACTS:
                if row[k] is None and k in s:
                    row[k] = s[k]
            kinds = s.get("kinds", {})
            row.update({f"n_{k}": kinds.get(k, 0) for k in schema.KINDS})
            row["n_records"] = sum(kinds.values())
            st, et = _float(s.get("start_time")), _float(s.get("end_time"))
            row["wall_time_s"] = (et - st) if st is not None and et is not None else None
            for k in ("attempt", "last_step", "diverged_step"):
                row[k] = _int(s.get(k))
            for k in ("start_time", "end_time"):
                row[k] = _float(s.get(k))
            for k in ("host", "slurm_job_id", "error", "data"):
                row[k] = None if s.get(k) is None else str(s.get(k))
        rows.append(row)
    return rows


def _write_runs(rows: list[dict[str, Any]], identity: list[tuple[str, pa.DataType]], path: Path, fmt: str) -> None:
    runs_schema = pa.schema([*identity, *RUN_FACTS])
    writer = TableWriter(path, runs_schema, fmt)
    try:
        writer.write(pa.Table.from_pylist(rows, schema=runs_schema))
    finally:
        writer.close()


# --------------------------------------------------------------------------- entry point


def collect(
    sweep_dir: str | os.PathLike[str],
    fmt: str = "parquet",
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    workers: int = 1,
    force: bool = False,
) -> CollectResult:
    """Collect ``sweep_dir`` into ``out`` (default ``<sweep_dir>/collected``); see module doc.

    ``fmt``: "parquet" or "csv". ``progress``: show a rich progress bar (stderr). ``workers``: >1
    parses changed runs in that many processes. ``force``: ignore the cache and re-read every run.
    NotASweep for a directory that holds no sweep; never fails on a damaged run.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    source = read_source(Path(sweep_dir))
    identity = identity_fields(source)
    runs = source.runs
    out_dir = Path(out) if out is not None else source.path / COLLECTED_DIR
    cache_root = out_dir / CACHE_DIR
    cache_root.mkdir(parents=True, exist_ok=True)
    res = CollectResult(source.path, out_dir, fmt, source.name, runs_total=len(runs), source=source)
    res.runs_missing = [r.run_id for r in runs if r.run_dir is None]
    summaries, todo = _from_cache(runs, cache_root, force)
    res.runs_cached = [r.run_id for r in runs if r.run_id in summaries]

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"read {source.name}", total=len(todo))
        summaries.update(_parse_runs(todo, cache_root, workers, lambda: bar.advance(task)))
        res.runs_read = [r.run_id for r in todo]
        _tally(res, runs, summaries)

        # Which kinds exist, and the key that says whether the tables need rebuilding.
        kinds = list(schema.KINDS)
        for s in summaries.values():
            kinds.extend(k for k in s["kinds"] if k not in kinds)
        ext = "parquet" if fmt == "parquet" else "csv"
        res.files = {k: out_dir / f"{k}.{ext}" for k in kinds}
        res.files["runs"] = out_dir / f"runs.{ext}"
        digest = _tables_digest(fmt, kinds, identity, runs, summaries)

        def assemble() -> dict[str, int]:
            built: dict[str, int] = {}
            n_pieces = sum(len(s["kinds"]) for s in summaries.values())
            atask = bar.add_task("assemble tables", total=n_pieces)
            for kind in kinds:
                pieces = [
                    (r, cache_root / r.run_id / f"{kind}.parquet")
                    for r in runs
                    if r.run_id in summaries and kind in summaries[r.run_id]["kinds"]
                ]
                built[kind] = _assemble_kind(pieces, identity, res.files[kind], fmt, lambda: bar.advance(atask))
            rows = _runs_rows(runs, summaries, identity)
            _write_runs(rows, identity, res.files["runs"], fmt)
            built["runs"] = len(rows)
            return built

        res.rows, res.assembled = reuse_or_build(cache_root / f"assembled.{fmt}.json", digest, res.files, assemble)
    res.seconds = time.perf_counter() - t0
    return res


def _from_cache(runs: list[RunInfo], cache_root: Path, force: bool) -> tuple[dict[str, dict[str, Any]], list[RunInfo]]:
    """(summaries of the runs whose cache is current, the runs to parse); drops the cache of runs
    that no longer exist."""
    present = {r.run_id for r in runs if r.run_dir is not None}
    for d in cache_root.iterdir():
        if d.is_dir() and d.name not in present:
            shutil.rmtree(d, ignore_errors=True)
    summaries: dict[str, dict[str, Any]] = {}
    todo: list[RunInfo] = []
    for r in runs:
        if r.run_dir is None:
            continue
        s = None if force else _cached_summary(r.run_dir, cache_root / r.run_id)
        if s is None:
            todo.append(r)
        else:
            s["from_cache"] = True
            summaries[r.run_id] = s
    return summaries, todo


def _parse_runs(
    todo: list[RunInfo], cache_root: Path, workers: int, advance: Callable[[], None]
) -> dict[str, dict[str, Any]]:
    """Parse each run into its cache pieces (in `workers` processes when > 1); their summaries."""
    summaries: dict[str, dict[str, Any]] = {}
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futs = {pool.submit(_process_run, r.run_id, str(r.run_dir), str(cache_root / r.run_id)): r for r in todo}
            for fut in as_completed(futs):
                summaries[futs[fut].run_id] = fut.result()
                advance()
    else:
        for r in todo:
            summaries[r.run_id] = _process_run(r.run_id, str(r.run_dir), str(cache_root / r.run_id))
            advance()
    return summaries


def _tally(res: CollectResult, runs: list[RunInfo], summaries: dict[str, dict[str, Any]]) -> None:
    """The result's counts: runs by state, unreadable lines and cut-off last lines by run."""
    for r in runs:
        res.status_counts[r.state] = res.status_counts.get(r.state, 0) + 1
        s = summaries.get(r.run_id)
        if s is not None and s["n_bad_lines"]:
            res.bad_lines[r.run_id] = s["n_bad_lines"]
        if s is not None and s["truncated_tail"]:
            res.truncated.append(r.run_id)


def _tables_digest(
    fmt: str,
    kinds: list[str],
    identity: list[tuple[str, pa.DataType]],
    runs: list[RunInfo],
    summaries: dict[str, dict[str, Any]],
) -> str:
    """What the tables are made of (format, kinds, identity and state of every run, every piece's
    file key): equal digests, equal tables."""
    state = [
        fmt,
        CACHE_VERSION,
        kinds,
        [str(t) for _, t in identity],
        [
            (
                _identity_values(r, identity),
                r.reason,
                r.in_manifest,
                r.overrides,
                summaries[r.run_id]["key"] if r.run_id in summaries else None,
            )
            for r in runs
        ],
    ]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
