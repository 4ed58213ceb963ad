"""status: the table at 80 columns, progress of running runs, --watch (honours its number above a
floor, ends when every run is final and no launch is live, follows a relaunch, newline-delimited JSON),
and the link to a sweep's report."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from fake_sweep import make_sweep, run_id

from deconcnn.analysis.report import report
from deconcnn.backends.registry import backend_class
from deconcnn.cli import follow, watch_interval
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.records import LaunchRecord
from deconcnn.sweep.status import WatchEnd, current_states
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import wait_for

FAILED = run_id("S-core", 0.1, 1e-3, 0)
RUNNING = run_id("S-adamw", 0.2, 1e-3, 1)


def test_watch_honours_its_number_above_the_executor_s_floor():
    local, slurm = backend_class("local").watch_min_s, backend_class("slurm").watch_min_s
    assert watch_interval(5, local) == 5 and watch_interval(1, local) == 2
    assert watch_interval(5, slurm) == 30 and watch_interval(120, slurm) == 120


def test_the_table_fits_80_columns_with_every_state_spelled_out(tmp_path, capsys, monkeypatch):
    sw = make_sweep(
        tmp_path / "sweep",
        variants=("S-core", "S-adamw", "S-bn-off", "S-narrow"),
        failed=[FAILED],
        running=[RUNNING],
        missing=[run_id("S-narrow", 0.1, 1e-3, 0)],
        lost=[run_id("S-bn-off", 0.1, 1e-3, 0)],
        diverged={run_id("S-adamw", 0.1, 1e-3, 0): 3},
    )
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert sweep_cli(["status", str(sw.path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for state in ("completed", "diverged", "failed", "lost", "missing", "running"):
        assert f" {state} " in out, state
    assert "S-narrow" in out and "…" not in out.split("running runs")[0]
    # The running run's progress: step / total (2 epochs x 8 steps), last loss, ETA.
    assert "10/16 (62%)" in out.split("running runs")[1]


def test_json_is_one_document_with_a_line_per_run(tmp_path, capsys):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core", "S-adamw"), failed=[FAILED], running=[RUNNING])
    capsys.readouterr()
    assert sweep_cli(["status", str(sw.path), "--json"]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert list(document) == ["sweep_dir", "time", "counts", "runs", "final"]
    states = {run["run_id"]: run["state"] for run in document["runs"]}
    assert states[FAILED] == "failed" and states[RUNNING] == "running" and len(states) == 8
    lines = out.splitlines()
    assert [json.loads(line.rstrip(","))["run_id"] for line in lines if line.startswith('{"run_id"')] == list(states)


def test_watch_of_a_final_sweep_ends_at_the_refresh_that_confirms_it_with_one_json_document_each(tmp_path, capsys):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), failed=[FAILED])
    capsys.readouterr()
    assert sweep_cli(["status", str(sw.path), "--watch", "1", "--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["final"] is True for line in lines)
    assert "every run is final and no launch of the sweep is running" in captured.err


def test_watch_does_not_end_while_a_launch_of_the_sweep_holds_its_lock(tmp_path):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), failed=[FAILED])
    out = tmp_path / "watch.jsonl"  # one document per refresh, flushed as it comes
    with SweepDir(sw.path).lock(), open(out, "w") as sink:  # a relaunch validating and submitting
        watch = subprocess.Popen(
            [sys.executable, "-m", "deconcnn.cli", "status", str(sw.path), "--watch", "1", "--json"],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for("three refreshes", lambda: watch.poll() is not None or len(out.read_text().splitlines()) >= 3)
        assert watch.poll() is None, "the watch ended while a launch held the sweep's lock"
    _, err = watch.communicate(timeout=60)
    assert watch.returncode == 0 and "no launch of the sweep is running" in err


def test_watch_follows_a_new_submission_instead_of_ending_on_the_old_one(tmp_path):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), failed=[FAILED])
    sd = SweepDir(sw.path)
    ended = WatchEnd(sw.path)
    states = current_states(sw.path)
    assert not ended(states)  # the first look at a final sweep: a relaunch may be starting
    time.sleep(0.01)  # a manifest written later than the last look has a later mtime
    sd.write_manifest(sd.read_manifest().logged(LaunchRecord("new", time.time(), "local", ())))
    assert not ended(states)  # a relaunch submitted since: its runs are followed
    assert ended(current_states(sw.path))


def test_watch_follows_a_sweep_until_every_run_is_final(tmp_path):
    running = run_id("S-core", 0.1, 1e-3, 0)
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0, 1), running=[running])
    slept = []

    def sleep(seconds):  # between refreshes, the running run finishes
        slept.append(seconds)
        run_json = sw.path / "runs" / running / "run.json"
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "status": "completed"}))

    seen = [{s.run_id: s.state for s in states} for states in follow(sw.path, current_states(sw.path), 7.0, sleep)]
    # it ends at the second refresh that finds every run final (WatchEnd: a relaunch may be starting)
    assert [states[running] for states in seen] == ["running", "completed", "completed"] and slept == [7.0, 7.0]


def test_watch_on_a_terminal_redraws_one_live_table(tmp_path, capsys, monkeypatch):
    sw = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), seeds=(0,), failed=[FAILED])
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stdout is a terminal
    capsys.readouterr()
    assert sweep_cli(["status", str(sw.path), "--watch", "1"]) == 0
    captured = capsys.readouterr()
    assert "\x1b[?25l" in captured.out  # rich.live hides the cursor while it draws
    assert "failed runs" in captured.out and "every run is final" in captured.err


def test_status_links_the_report_once_there_is_one(tmp_path, capsys, monkeypatch):
    sweep = make_sweep(
        tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), wds=(1e-3,), seeds=(0,), epochs=1, steps_per_epoch=4
    )
    monkeypatch.setenv("COLUMNS", "200")
    assert sweep_cli(["status", str(sweep.path)]) == 0
    assert "report:" not in capsys.readouterr().out
    report(sweep.path)
    assert sweep_cli(["status", str(sweep.path)]) == 0
    assert f"report: {sweep.path / 'report' / 'index.html'}" in capsys.readouterr().out
