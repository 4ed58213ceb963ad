"""Nothing silently lost: a run whose directory is deleted (or replaced) mid-run fails and writes
nothing more anywhere; a run whose metric log lost steps ends failed, never completed, and the next
attempt trains them again. Real training processes, real `rm -rf`."""

from __future__ import annotations

import errno
import shutil
from collections import Counter
from pathlib import Path

import pytest
from runs import TINY, read_status, start_forked, train_forked, wait_forked

from deconcnn.backends import preloaded
from deconcnn.runlog.rundir import RunDirIdentity, RunFilesLost
from deconcnn.training.checkpoints import CHECKPOINT_DIR, LAST_CHECKPOINT, AtomicCheckpointIO
from sweeps import train_steps, wait_for

STEPS = 32  # TINY: 2 epochs x 16 steps
SLOW_STEPS = [  # every step flushed, then 0.3 s of sleep: an rm -rf lands between two steps' writes
    "callbacks.loss_slope_logger.flush_every_n_steps=1",
    "+callbacks.slow._target_=fault_callbacks.SleepEachStep",
    "+callbacks.slow.seconds=0.3",
]
ENV = {"OMP_NUM_THREADS": "1"}


def start(run_dir: Path) -> tuple[preloaded.ForkedRun, Path]:
    """The slow run, and its log (beside the run directory, which the test deletes)."""
    log = run_dir.with_suffix(".log")
    return start_forked([*TINY, *SLOW_STEPS, f"hydra.run.dir={run_dir}"], log, env=ENV), log


def rm_rf(path: Path) -> None:
    """`rm -rf`, run again when the run wrote a last file (its run.json: failed, its log deleted) into
    the directory while it was being emptied, so that the rmdir found it not empty: a purge that
    retries. What the test checks is after: nothing made again once the directory is gone."""
    for _ in range(5):
        try:
            shutil.rmtree(path)
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
    shutil.rmtree(path)


@pytest.mark.slow
@pytest.mark.parametrize("recreated", [False, True], ids=["deleted", "deleted-and-recreated"])
def test_rm_rf_of_the_run_directory_mid_run_fails_and_writes_nothing_more(tmp_path, recreated):
    run_dir = tmp_path / "run"
    run, log = start(run_dir)
    wait_for("step 7", lambda: len(train_steps(run_dir)) >= 7 or run.poll() is not None, timeout=120)
    rm_rf(run_dir)  # a scratch purge
    if recreated:  # ... and the path made again (a relaunch, a user)
        run_dir.mkdir()
    code, err = wait_forked(run, timeout=120), log.read_text()
    assert code == 1, err[-3000:]
    assert "deconcnn-train: failed:" in err and "deleted mid-run" in err, err[-3000:]
    # Neither a re-created directory with a run.json saying completed, nor a write into the new one.
    assert (sorted(run_dir.iterdir()) == []) if recreated else not run_dir.exists()


def test_a_log_that_lost_steps_fails_the_run_and_the_next_attempt_trains_them_again(tmp_path):
    cut = ["+callbacks.cut._target_=fault_callbacks.CutLogAtStep", "+callbacks.cut.step=20"]
    log = tmp_path.with_suffix(".log")
    first = train_forked([*TINY, *cut, f"hydra.run.dir={tmp_path}"], log, env=ENV)  # 2 epochs of 16 steps
    assert first == 1, log.read_text()[-3000:]
    status = read_status(tmp_path)
    assert status["status"] == "failed" and "20 of its 32 training steps are missing (first 0)" in status["error"]
    assert "deconcnn-train: failed: training ended, but metrics.jsonl: 20 of its 32" in log.read_text()
    # The same command again: no checkpoint covers a whole log, so it starts over and completes.
    again = train_forked([*TINY, f"hydra.run.dir={tmp_path}"], log, env=ENV)
    assert again == 0, log.read_text()[-3000:]
    status = read_status(tmp_path)
    assert status["status"] == "completed" and status["resumed_from"] is None, status
    assert status["resume_note"].startswith("last.ckpt is not resumed from (metrics.jsonl: 20 of its 32 training")
    steps = Counter(train_steps(tmp_path))
    assert sorted(steps) == list(range(STEPS)) and set(steps.values()) == {1}
    assert status["metrics_log_bytes"] == (tmp_path / "metrics.jsonl").stat().st_size


@pytest.mark.parametrize("made_again", [False, True], ids=["deleted", "deleted-and-made-again"])
def test_a_checkpoint_never_makes_a_deleted_run_directory_again(tmp_path, made_again):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint_io = AtomicCheckpointIO(RunDirIdentity(run_dir))
    real_gone = checkpoint_io.run_dir.gone
    rm_rf = iter([True])

    def gone_after_the_check() -> str | None:  # the rm -rf lands right after the run's check
        if next(rm_rf, False):
            shutil.rmtree(run_dir)
            if made_again:
                run_dir.mkdir()
            return None
        return real_gone()

    checkpoint_io.run_dir.gone = gone_after_the_check  # type: ignore[method-assign]
    with pytest.raises(RunFilesLost, match="replaced mid-run" if made_again else "deleted mid-run"):
        checkpoint_io.save_checkpoint({"step": 1}, run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT)
    assert (list(run_dir.iterdir()) == []) if made_again else not run_dir.exists()
