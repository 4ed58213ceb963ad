"""Several sweeps as one: each is collected as usual (incrementally, into its own ``collected/``),
then their tables are joined into one per record kind, with a ``sweep`` column first.

    result = collect_many(["results/lr_small", "results/lr_large"])
    # -> results/compare-lr_small+lr_large/collected/{train,val,curvature,noise,checkpoint,runs}.parquet

Growing a grid means a new sweep; this is the table across them (and what ``report A B`` draws).
A row is known by (``sweep``, ``run_id``): two sweeps of one grid share their run ids. Columns are
the union of the sweeps' columns, typed by collect's rule (int + float -> float, anything else mixed
-> string). An axis one sweep did not sweep holds the value its runs ran with (their composed
config, else their overrides; null where neither says), so `optim.lr` of a sweep that fixed it at
0.2 reads 0.2 beside the sweep that swept it. Rows are copied one row group
(one run) at a time, so memory stays bounded by a run, and the tables are rewritten only when a
sweep's own tables changed. Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deconcnn.analysis.collect import (
    FORMATS,
    CollectResult,
    TableWriter,
    axis_type,
    collect,
    reuse_or_build,
    unify_type,
)
from deconcnn.analysis.sources import COMPARE_PREFIX, SWEEP_COLUMN, RunInfo, SweepSource, run_key, run_setting
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import COLLECTED_DIR

__all__ = ["CompareResult", "collect_many", "compare_home", "sweep_labels"]

_RECORD = ".compare.{fmt}.json"


@dataclass
class CompareResult(CollectResult):
    """``collect_many``'s result: the joined tables (``files``, ``rows``) and each sweep's own collect."""

    sweeps: list[CollectResult] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the `sweep` column's values, in the given order

    def summary(self) -> str:
        lines = [
            f"{label}: {r.runs_total} run{'s' * (r.runs_total != 1)}, {len(r.runs_read)} read, "
            f"{len(r.runs_cached)} from cache ({r.sweep_dir})"
            for label, r in zip(self.labels, self.sweeps)
        ]
        lines.append(
            f"one table per kind across {len(self.sweeps)} sweeps (column '{SWEEP_COLUMN}')"
            + ("" if self.assembled else "; tables unchanged")
            + f", {self.seconds:.1f} s"
        )
        lines += [f"  {kind:<11} {self.rows.get(kind, 0):>10} rows  {path}" for kind, path in self.files.items()]
        return "\n".join(lines)


def sweep_labels(sources: Sequence[SweepSource]) -> list[str]:
    """Each sweep's name; where two share one (the same sweep file run twice, under other --out
    folders), the name with its parent folder, and else the whole path."""
    names = [s.name for s in sources]
    labels = [f"{s.path.parent.name}/{s.name}" if names.count(s.name) > 1 else s.name for s in sources]
    return [str(s.path) if labels.count(label) > 1 else label for s, label in zip(sources, labels)]


def compare_home(sources: Sequence[SweepSource], labels: Sequence[str]) -> Path:
    """Where a comparison's tables and report go by default: beside the first sweep."""
    return sources[0].path.parent / (COMPARE_PREFIX + "+".join(label.replace("/", "_") for label in labels))


def _combined_source(home: Path, labels: list[str], sources: list[SweepSource]) -> SweepSource:
    """The sweeps' runs as one source; a run's value of an axis its own sweep did not sweep is the
    setting it ran with (sources.run_setting)."""
    axes = list(dict.fromkeys([SWEEP_COLUMN, *(a for s in sources for a in s.axes)]))
    runs = []
    for label, source in zip(labels, sources):
        for r in source.runs:
            settings = {a: run_setting(r, a) for a in axes[1:] if a not in source.axes}
            params = {SWEEP_COLUMN: label, **r.params, **settings}
            key = run_key(r.run_id, label)
            runs.append(RunInfo(key, r.run_dir, r.variant, params, r.state, r.reason, r.in_manifest, r.overrides))
    variants = list(dict.fromkeys(v for s in sources for v in s.variants))
    return SweepSource(" vs ".join(labels), home, "compare", runs, axes, variants)


def _file_state(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _join(parts: list[tuple[str, Path]], path: Path, fmt: str, source: SweepSource) -> int:
    """Write the sweeps' tables of one kind as one, a `sweep` column first; returns its rows. An axis
    a sweep's table lacks gets each run's setting of it (from `source`)."""
    settings = {r.run_id: r.params for r in source.runs}
    types: dict[str, set[pa.DataType]] = {}
    for _label, part in parts:
        for f in pq.read_schema(part):
            types.setdefault(f.name, set()).add(f.type)
    for axis in source.axes[1:]:
        types.setdefault(axis, set()).add(axis_type([r.params.get(axis) for r in source.runs]))
    fields = [pa.field(name, unify_type(name, ts)) for name, ts in types.items()]
    schema = pa.schema([pa.field(SWEEP_COLUMN, pa.string()), *fields])
    writer = TableWriter(path, schema, fmt)
    try:
        for label, part in parts:
            pf = pq.ParquetFile(part)
            for i in range(pf.num_row_groups):  # one run per row group (collect writes them so)
                t = pf.read_row_group(i)
                n = t.num_rows
                cols = [pa.repeat(pa.scalar(label, pa.string()), n)]
                keys: list[str] | None = None
                for f in fields:
                    if f.name in t.column_names:
                        c = t.column(f.name)
                    elif f.name in source.axes:  # the runs' settings of an axis this sweep did not sweep
                        keys = keys or [run_key(i, label) for i in t.column("run_id").to_pylist()]
                        c = pa.array([settings[k].get(f.name) if k in settings else None for k in keys])
                    else:
                        c = pa.nulls(n, f.type)
                    cols.append(c if c.type == f.type else c.cast(f.type))
                writer.write(pa.Table.from_arrays(cols, schema=schema))
    finally:
        writer.close()
    return writer.rows


def collect_many(
    sweep_dirs: Sequence[str | os.PathLike[str]],
    fmt: str = "parquet",
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    *,
    workers: int = 1,
) -> CompareResult:
    """Collect each of ``sweep_dirs`` (a sweep or a Hydra multirun directory each; parquet, into its
    own ``collected/``) and join their tables into ``out`` (default
    ``<first sweep's folder>/compare-<A>+<B>/collected``); see the module doc."""
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    paths = [Path(d) for d in sweep_dirs]
    if len(paths) < 2:
        raise SweepError(f"comparing sweeps takes two or more sweep directories, got {len(paths)}")
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            other = seen[p.resolve()]
            raise SweepError(f"{p} is given twice" + (f" (also as {other})" if other != p else ""))
        seen[p.resolve()] = p
    results = [collect(p, fmt="parquet", progress=progress, workers=workers) for p in paths]
    sources = [r.source for r in results if r.source is not None]
    labels = sweep_labels(sources)
    home = compare_home(sources, labels)
    out_dir = Path(out) if out is not None else home / COLLECTED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    res = CompareResult(
        home,
        out_dir,
        fmt,
        " vs ".join(labels),
        runs_total=sum(r.runs_total for r in results),
        source=_combined_source(home, labels, sources),
        sweeps=results,
        labels=labels,
    )
    for label, r in zip(labels, results):
        res.runs_read += [run_key(i, label) for i in r.runs_read]
        res.runs_cached += [run_key(i, label) for i in r.runs_cached]
        res.runs_missing += [run_key(i, label) for i in r.runs_missing]
        res.truncated += [run_key(i, label) for i in r.truncated]
        res.bad_lines.update({run_key(i, label): n for i, n in r.bad_lines.items()})
        for status, n in r.status_counts.items():
            res.status_counts[status] = res.status_counts.get(status, 0) + n

    kinds = list(dict.fromkeys(k for r in results for k in r.files))
    parts = {
        k: [(lb, r.files[k]) for lb, r in zip(labels, results) if k in r.files and r.files[k].is_file()] for k in kinds
    }
    ext = "parquet" if fmt == "parquet" else "csv"
    res.files = {k: out_dir / f"{k}.{ext}" for k in kinds if parts[k]}
    source = res.source
    assert source is not None
    settings = [r.params for r in source.runs]  # also read from the runs' configs, not only the tables
    state = [fmt, labels, {k: [_file_state(p) for _, p in parts[k]] for k in res.files}, settings]
    digest = hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()
    res.rows, res.assembled = reuse_or_build(
        out_dir / _RECORD.format(fmt=fmt),
        digest,
        res.files,
        lambda: {kind: _join(parts[kind], path, fmt, source) for kind, path in res.files.items()},
    )
    res.seconds = time.perf_counter() - t0
    return res
