"""The finished runs' run.json cache (deconcnn.sweep.state_cache): exact whatever happens to the files.

A cached run is checked by a stat: a run.json changed in place, replaced, or deleted, and a metric
log cut short, are seen at the next read; fresh files and states that can still change are never
cached; a corrupt or unwritable cache file is ignored without a word; status reads the same
through it.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from fake_sweep import make_sweep, run_id

from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.layout import RUN_STATES_CACHE
from deconcnn.runlog.metrics_log import METRICS_FILE
from deconcnn.runlog.records import RunStatus
from deconcnn.runlog.run_status import RUN_STATUS_FILE, read_checked_status
from deconcnn.sweep import state_cache
from deconcnn.sweep.state_cache import RunStatusCache
from deconcnn.sweep.status import current_states

TICK_S = 0.05  # > a coarse file timestamp tick (1-10 ms): a write after it gets a later ctime


@pytest.fixture
def reads(monkeypatch):
    """Counts the run.json files the cache reads (rather than stats); files older than TICK_S are
    cached (the racy window RACY_S shrunk to one tick so the tests need not wait seconds)."""
    count = {"n": 0}
    real = state_cache.read_small_file_stat

    def counting(path):
        count["n"] += path.endswith(RUN_STATUS_FILE)
        return real(path)

    monkeypatch.setattr(state_cache, "read_small_file_stat", counting)
    monkeypatch.setattr(state_cache, "RACY_S", TICK_S / 2)
    return count


def write_run(run_dir, status="completed", log_bytes=100, **extra):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).write_bytes(b"x" * (log_bytes or 0))
    run = RunStatus(status, run_dir.name, metrics_log_bytes=log_bytes, **extra)
    (run_dir / RUN_STATUS_FILE).write_text(json.dumps(run.to_json()))
    time.sleep(TICK_S)


def cached_read(sweep, run_dir):
    """One status pass over one run: read through the cache, then save it."""
    cache = RunStatusCache(sweep)
    run = cache.read(run_dir.name, str(run_dir))
    cache.save()
    return run


def test_a_finished_run_is_read_once_then_known_by_a_stat(tmp_path, reads):
    run_dir = tmp_path / "runs" / "a"
    write_run(run_dir, "diverged", diverged_step=7)
    first = cached_read(tmp_path, run_dir)
    assert first.status == "diverged" and reads["n"] == 1
    again = cached_read(tmp_path, run_dir)
    assert reads["n"] == 1, "the second read must come from the cache"
    assert again.status == "diverged" and again.diverged_step == 7


@pytest.mark.parametrize(
    "change",
    [
        # in place, same size, mtime set back: only ctime tells
        lambda p: (
            st := p.stat(),
            p.write_text(p.read_text().replace("completed", "cancelled")),
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns)),
        ),
        # a new file renamed over it, as every writer does
        lambda p: (p.with_name("new").write_text('{"status": "failed"}'), p.with_name("new").rename(p)),
    ],
    ids=["rewritten-in-place", "replaced"],
)
def test_a_changed_run_json_is_seen_at_once(tmp_path, reads, change):
    run_dir = tmp_path / "runs" / "a"
    write_run(run_dir)
    assert cached_read(tmp_path, run_dir).status == "completed"
    assert cached_read(tmp_path, run_dir).status == "completed" and reads["n"] == 1
    change(run_dir / RUN_STATUS_FILE)
    run = cached_read(tmp_path, run_dir)
    assert run == read_checked_status(run_dir) and run.status in ("cancelled", "failed")
    assert reads["n"] == 2


def test_a_deleted_run_json_or_a_shortened_log_is_seen_at_once(tmp_path, reads):
    run_dir = tmp_path / "runs" / "a"
    write_run(run_dir)
    cached_read(tmp_path, run_dir)
    (run_dir / METRICS_FILE).write_bytes(b"x" * 60)
    run = cached_read(tmp_path, run_dir)
    assert reads["n"] == 1  # from the cache, and still the log is checked
    assert run.status == "failed" and "short (60 of 100 bytes)" in run.error
    (run_dir / RUN_STATUS_FILE).unlink()
    assert cached_read(tmp_path, run_dir) is None


def test_a_fresh_or_unfinished_run_json_is_never_cached(tmp_path, reads, monkeypatch):
    running, failed, fresh = (tmp_path / "runs" / name for name in ("running", "failed", "fresh"))
    write_run(running, "running", None)
    write_run(failed, "failed", None, error="boom")
    for run_dir in (running, failed):
        cached_read(tmp_path, run_dir)
        cached_read(tmp_path, run_dir)
    assert reads["n"] == 4
    monkeypatch.setattr(state_cache, "RACY_S", 60.0)  # written within the racy window
    write_run(fresh)
    cached_read(tmp_path, fresh)
    cached_read(tmp_path, fresh)
    assert reads["n"] == 6
    assert not (tmp_path / RUN_STATES_CACHE).exists()  # nothing worth writing


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe not json",
        b'{"version": 1, "runs": [1, 2]}',
        b'{"version": 99, "runs": {}}',
        b"[]",
        # entries of the wrong form, and one claiming a state that is never cached
        b'{"version": 1, "runs": {"a": [1, 2], "b": "x", "c": [0, 0, 0, 0, 0, "running", null, null]}}',
        b'{"version": 1, "runs": {"c": 7}}',
        b'{"version": 1, "runs": {"c": [0, 0, 0, 0, 0, "completed", "x", null]}}',
    ],
)
def test_a_corrupt_cache_file_is_ignored_without_a_word(tmp_path, reads, garbage):
    run_dir = tmp_path / "runs" / "c"
    write_run(run_dir, "running", None)
    st = (run_dir / RUN_STATUS_FILE).stat()
    ident = ", ".join(map(str, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    (tmp_path / RUN_STATES_CACHE).write_bytes(garbage.replace(b"0, 0, 0, 0, 0", ident.encode()))
    assert cached_read(tmp_path, run_dir).status == "running"
    assert reads["n"] == 1


def test_an_unwritable_cache_is_ignored(tmp_path, reads):
    (tmp_path / RUN_STATES_CACHE).mkdir()  # neither readable as a file nor replaceable by one
    run_dir = tmp_path / "runs" / "a"
    write_run(run_dir)
    assert cached_read(tmp_path, run_dir).status == "completed"
    assert cached_read(tmp_path, run_dir).status == "completed"
    assert reads["n"] == 2


def test_status_reads_the_same_through_the_cache(tmp_path, reads, capsys):
    failed = run_id("S-core", 0.1, 1e-3, 0)
    diverged = run_id("S-adamw", 0.1, 1e-3, 0)
    sw = make_sweep(tmp_path / "sweep", failed=[failed], diverged={diverged: 3})
    time.sleep(TICK_S)
    before = [s.to_json() for s in current_states(sw.path)]
    # Each run's once, the failed run's twice (again after the scheduler's answer: sweep_states).
    assert (sw.path / RUN_STATES_CACHE).exists() and reads["n"] == 9
    assert [s.to_json() for s in current_states(sw.path)] == before
    assert reads["n"] == 11  # only the failed run's run.json is read again
    capsys.readouterr()
    assert sweep_cli(["status", str(sw.path), "--json"]) == 0
    assert [{**r, "progress": None} for r in json.loads(capsys.readouterr().out)["runs"]] == [
        {**r, "progress": None} for r in before
    ]
    # A finished run's run.json replaced behind the cache's back is read again.
    completed = next(r for r in before if r["state"] == "completed")
    path = sw.path / "runs" / completed["run_id"] / RUN_STATUS_FILE
    path.with_name("new").write_text(json.dumps({"status": "failed", "error": "boom"}))
    path.with_name("new").rename(path)
    after = [s.to_json() for s in current_states(sw.path)]
    assert next(r for r in after if r["run_id"] == completed["run_id"])["state"] != "completed"
    (sw.path / RUN_STATES_CACHE).unlink()
    assert [s.to_json() for s in current_states(sw.path)] == after  # as read without the cache
