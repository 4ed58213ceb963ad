"""launch/status on this machine: idempotent relaunch, refusals with exit 2, the launch lock."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from deconcnn.backends.slurm import cli as slurm
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import launch_json, status_of, write_sweep


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny sweep launched here, and what the launch printed (not on a terminal)."""
    root = tmp_path_factory.mktemp("local")
    sweep_file = write_sweep(root / "tiny.yaml")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert launch_json(sweep_file, "--executor", "local", "--out", root / "out", "--parallel", "2") == 0
    return sweep_file, root / "out" / "tiny", out.getvalue()


@pytest.fixture(scope="module")
def finished_sweep(launched) -> tuple[Path, Path]:
    return launched[:2]


@pytest.mark.slow
def test_a_local_launch_prints_a_line_per_run_and_a_summary(launched):
    _sweep_file, sweep_dir, out = launched
    lines = out.splitlines()
    assert lines[:2] == [
        "2 runs start here, 2 at a time (Ctrl-C stops them; a relaunch resumes them)",
        f"follow them from another terminal: deconcnn-sweep status {sweep_dir}",
    ]
    ended = [line for line in lines if line.startswith("[")]
    assert sorted(line.split("] ")[1].split("  (")[0] for line in ended) == [
        "S-core_s0: completed",
        "S-core_s1: completed",
    ]
    assert re.fullmatch(r"\[1/2\] S-core_s[01]: completed  \(running [01], failed 0, ETA \d\d:\d\d:\d\d\)", ended[0])
    assert re.fullmatch(r"\[2/2\] S-core_s[01]: completed  \(running 0, failed 0\)", ended[1])
    assert re.fullmatch(r"2/2 runs ended in \d\d:\d\d:\d\d: 2 completed", lines[-1])
    assert "\x1b" not in out  # no bar, no colour codes in a file


@pytest.mark.slow
def test_local_launch_runs_every_run_to_completion(finished_sweep, capsys):
    sweep_dir = finished_sweep[1]
    status = status_of(sweep_dir, capsys)
    assert status["counts"]["all"]["completed"] == 2 and status["counts"]["all"]["total"] == 2
    for run in status["runs"]:
        run_dir = Path(run["run_dir"])
        assert (run_dir / "metrics.jsonl").stat().st_size > 0
        assert json.loads((run_dir / "run.json").read_text())["run_id"] == run["run_id"]
        assert (run_dir / ".hydra" / "config.yaml").exists()  # the composed config, for provenance


@pytest.mark.slow
def test_relaunching_a_finished_sweep_submits_nothing(finished_sweep, capsys):
    sweep_file, sweep_dir = finished_sweep
    capsys.readouterr()
    assert launch_json(sweep_file, "--executor", "local", "--out", sweep_dir.parent) == 0
    assert "0 runs submitted, skipped: 2 completed" in capsys.readouterr().out
    manifest = SweepDir(sweep_dir).read_manifest()
    assert manifest.submissions[-1].runs == ()
    assert all(entry.attempts == 1 for entry in manifest.runs.values())


@pytest.mark.slow
def test_relaunch_resubmits_only_failed_runs_keeping_attempts(finished_sweep, capsys):
    sweep_file, sweep_dir = finished_sweep
    failed_dir = SweepDir(sweep_dir).run_dir("S-core_s1")
    run = json.loads((failed_dir / "run.json").read_text())
    write_json_atomic(failed_dir / "run.json", {**run, "status": "failed", "error": "RuntimeError: boom"})
    status = status_of(sweep_dir, capsys)
    failed = [r for r in status["runs"] if r["state"] == "failed"]
    assert [(r["run_id"], r["reason"]) for r in failed] == [("S-core_s1", "RuntimeError: boom")]
    capsys.readouterr()
    assert launch_json(sweep_file, "--executor", "local", "--out", sweep_dir.parent, "--quiet") == 0
    out = capsys.readouterr().out
    assert "1 runs submitted, skipped: 1 completed" in out
    # --quiet: a line per run that ends and the result, no progress counts, no summary
    assert out.splitlines()[0] == "S-core_s1: completed" and "runs start here" not in out and "ended in" not in out
    manifest = SweepDir(sweep_dir).read_manifest()
    assert manifest.runs["S-core_s1"].attempts == 2 and manifest.runs["S-core_s0"].attempts == 1
    assert status_of(sweep_dir, capsys)["counts"]["all"]["completed"] == 2


@pytest.mark.slow
def test_a_completed_run_that_lost_its_log_or_a_garbage_run_json_is_failed_then_trained_again(finished_sweep, capsys):
    sweep_file, sweep_dir = finished_sweep
    sd = SweepDir(sweep_dir)
    (sd.run_dir("S-core_s0") / "run.json").write_text('{"status": "compl')  # a damaged disk, a hand edit
    (sd.run_dir("S-core_s1") / "metrics.jsonl").unlink()  # a scratch purge of the log alone
    reasons = {r["run_id"]: (r["state"], r["reason"]) for r in status_of(sweep_dir, capsys)["runs"]}
    state, reason = reasons["S-core_s0"]
    assert state == "failed" and reason.startswith("run.json unreadable: JSONDecodeError"), reason
    assert "is gone, and run.json does not say how it ended" in reason
    assert reasons["S-core_s1"] == (
        "failed",
        "run.json says completed, but metrics.jsonl is missing: a relaunch trains it again",
    )
    capsys.readouterr()
    assert launch_json(sweep_file, "--executor", "local", "--out", sweep_dir.parent, "--quiet") == 0
    assert "2 runs submitted, skipped: none" in capsys.readouterr().out
    assert status_of(sweep_dir, capsys)["counts"]["all"]["completed"] == 2
    for run_id in ("S-core_s0", "S-core_s1"):
        steps = [
            r["step"] for r in map(json.loads, (sd.run_dir(run_id) / "metrics.jsonl").open()) if r["kind"] == "train"
        ]
        assert steps == [0, 1, 2, 3], run_id


@pytest.mark.slow
def test_a_changed_sweep_file_is_refused_saying_what_changed(finished_sweep, tmp_path, capsys):
    _sweep_file, sweep_dir = finished_sweep
    changed = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    assert launch_json(changed, "--executor", "local", "--out", sweep_dir.parent) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed since this sweep was launched: 1 added (e.g. S-core_s2)" in err


@pytest.mark.slow
def test_a_dry_run_of_a_changed_sweep_file_says_what_launch_says(finished_sweep, tmp_path, capsys):
    _sweep_file, sweep_dir = finished_sweep
    changed = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    capsys.readouterr()
    assert launch_json(changed, "--executor", "local", "--out", sweep_dir.parent) == 2
    refusal = capsys.readouterr().err
    assert launch_json(changed, "--executor", "local", "--out", sweep_dir.parent, "--dry-run") == 2
    assert capsys.readouterr().err == refusal and "changed since this sweep was launched" in refusal


@pytest.mark.slow
def test_a_second_launch_of_a_sweep_being_launched_is_refused(finished_sweep, capsys):
    sweep_file, sweep_dir = finished_sweep
    with SweepDir(sweep_dir).lock():
        assert launch_json(sweep_file, "--executor", "local", "--out", sweep_dir.parent) == 2
    assert "another launch of this sweep is running (pid" in capsys.readouterr().err


def _refused(capsys, *args) -> str:
    capsys.readouterr()
    assert launch_json(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("deconcnn-sweep: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_exit_2_and_nothing_submitted(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    unknown = write_sweep(tmp_path / "unknown.yaml", variants={"S-x": {"experiment": "no_such_variant"}})
    assert "Could not find 'experiment/no_such_variant'" in _refused(capsys, unknown, "--out", out)
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("name: x\nvariants: [unclosed\n")
    assert "not valid YAML" in _refused(capsys, malformed, "--out", out)
    wrong_type = write_sweep(tmp_path / "wrong_type.yaml", extra=["optim.weight_decay=lots"])
    assert "optim.weight_decay must be a number, got 'lots'" in _refused(capsys, wrong_type, "--out", out)
    good = write_sweep(tmp_path / "good.yaml")
    monkeypatch.setattr(slurm, "slurm_available", lambda timeout=10.0: False)
    assert "no SLURM controller answers" in _refused(capsys, good, "--executor", "slurm", "--out", out)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "cannot write to output directory" in _refused(capsys, good, "--executor", "local", "--out", a_file)
    assert "--only 'S-nope' matches no run" in _refused(capsys, good, "--only", "S-nope", "--out", out)
    assert not out.exists()


def test_status_of_a_directory_that_is_no_sweep(tmp_path, capsys):
    assert sweep_cli(["status", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
