"""run.json as status and relaunch read it: a completed run whose metric log went missing or was
cut reads failed (a stat, no parse); a garbage run.json reads unreadable with its own error."""

from __future__ import annotations

import json
import shutil

import pytest

from deconcnn.backends import SchedulerState
from deconcnn.runlog import run_status
from deconcnn.runlog.metrics_log import METRICS_FILE, verify_train_steps
from deconcnn.runlog.records import UNREADABLE, RunStatus, RunSubmission
from deconcnn.runlog.run_status import RunStatusFile, read_checked_status, read_small_file
from deconcnn.runlog.rundir import RunFilesLost
from deconcnn.sweep.state import run_state


def completed(run_dir, log: bytes, recorded: int | None) -> None:
    (run_dir / METRICS_FILE).write_bytes(log)
    (run_dir / "run.json").write_text(json.dumps(RunStatus("completed", metrics_log_bytes=recorded).to_json()))


def test_a_completed_run_keeps_its_status_while_its_log_is_whole(tmp_path):
    completed(tmp_path, b"x" * 100, 100)
    assert read_checked_status(tmp_path).status == "completed"
    (tmp_path / METRICS_FILE).write_bytes(b"x" * 120)  # appended to since: nothing lost
    assert read_checked_status(tmp_path).status == "completed"


@pytest.mark.parametrize(
    ("cut", "why"),
    [
        (lambda log: log.unlink(), "metrics.jsonl is missing"),
        (lambda log: log.write_bytes(b"x" * 60), "short (60 of 100"),
    ],
)
def test_a_completed_run_whose_log_is_missing_or_short_reads_failed(tmp_path, cut, why):
    completed(tmp_path, b"x" * 100, 100)
    cut(tmp_path / METRICS_FILE)
    run = read_checked_status(tmp_path)
    assert run.status == "failed" and why in run.error and "a relaunch trains it again" in run.error


def test_a_run_json_from_before_the_log_size_was_recorded_is_taken_as_it_says(tmp_path):
    completed(tmp_path, b"", None)
    assert read_checked_status(tmp_path).status == "completed"


@pytest.mark.parametrize("text", ['{"status": "compl', "[1, 2]", '{"no": "status"}', "\\xff\\xfe"])
def test_a_garbage_run_json_is_unreadable_with_its_own_error(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    run = read_checked_status(tmp_path)
    assert run.status == UNREADABLE and run.error.startswith("run.json unreadable: ")
    assert read_checked_status(tmp_path / "absent") is None


def test_an_unreadable_run_json_is_judged_by_what_else_is_known():
    submission = RunSubmission("s", "slurm", 0, "7_0", "7_0", (), None)
    unreadable = RunStatus.unreadable("run.json unreadable: JSONDecodeError: x")
    state, reason = run_state(submission, unreadable, None, SchedulerState("ended", "TIMEOUT"), None)
    assert state == "failed" and reason.startswith(
        "run.json unreadable: JSONDecodeError: x; its SLURM task ended TIMEOUT"
    )
    state, reason = run_state(submission, unreadable, None, SchedulerState("unknown"), None)
    assert state == "failed" and "the scheduler does not know its job" in reason  # lost, said failed with why
    assert run_state(submission, unreadable, None, SchedulerState("pending", "Priority"), None) == (
        "pending",
        "Priority",
    )


def train_log(tmp_path, steps: list[int]):
    path = tmp_path / METRICS_FILE
    lines = [{"kind": "train", "step": s} for s in steps] + [{"kind": "val", "step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_every_training_step_once_is_what_completes_a_run(tmp_path):
    assert verify_train_steps(train_log(tmp_path, [0, 1, 2, 3]), 4) is None
    assert "2 of its 4 training steps are missing (first 0)" in verify_train_steps(train_log(tmp_path, [2, 3]), 4)
    assert "1 are logged twice (first step 2)" in verify_train_steps(train_log(tmp_path, [0, 1, 2, 2, 3]), 4)
    assert verify_train_steps(train_log(tmp_path, [0, 0, 1, 1, 2, 2, 3]), 4, repeats=True) is None  # accumulation
    assert "1 lie beyond step 3" in verify_train_steps(train_log(tmp_path, [0, 1, 2, 3, 4]), 4)
    assert verify_train_steps(tmp_path / "absent", 4) == "absent is missing"
    # A run without a per-batch logger has no train records to count; a resume reads only a prefix.
    assert verify_train_steps(train_log(tmp_path, []), 4, required=False) is None
    path = train_log(tmp_path, [0, 1, 2, 3])
    assert verify_train_steps(path, 2, limit=len(path.read_text().splitlines(keepends=True)[0]) * 2) is None


@pytest.mark.parametrize("size", [0, 99, 100, 101, 250])
def test_a_small_file_is_read_whole_across_read_sizes(tmp_path, size):
    data = bytes(range(256))[:size]
    (tmp_path / "f").write_bytes(data)
    assert read_small_file(str(tmp_path / "f"), chunk=100) == data


@pytest.mark.parametrize("made_again", [False, True], ids=["deleted", "deleted-and-made-again"])
def test_run_json_never_lands_outside_the_directory_the_run_started_in(tmp_path, monkeypatch, made_again):
    # rm -rf deletes file by file, then the directory: a run that saw its log go and checks its
    # directory before the rmdir writes run.json after it. The write goes through the directory the
    # run holds open, so it fails quietly (the run's own error says why), and a path made again
    # meanwhile gets nothing.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    status = RunStatusFile(run_dir, "r")
    status.start()
    real_write = run_status.write_bytes_atomic

    def rm_rf_then_write(*args, **kwargs):
        shutil.rmtree(run_dir)
        if made_again:
            run_dir.mkdir()
        real_write(*args, **kwargs)

    monkeypatch.setattr(run_status, "write_bytes_atomic", rm_rf_then_write)
    real_gone = status.run_dir.gone
    answers = iter([None])  # the first check ran before the rmdir, later ones look again
    monkeypatch.setattr(status.run_dir, "gone", lambda: next(answers, None) or real_gone())
    status.finish("failed", 7, error="RunFilesLost: metrics.jsonl was deleted mid-run")
    assert (list(run_dir.iterdir()) == []) if made_again else not run_dir.exists()
    monkeypatch.undo()
    with pytest.raises(RunFilesLost, match="deleted mid-run" if not made_again else "replaced mid-run"):
        status.update(last_step=8)
