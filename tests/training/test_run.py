"""One instrumented run end to end: the metric log, checkpoints, resume, divergence, failure."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from fault_callbacks import GradNormWitness
from hydra.utils import instantiate
from runs import TINY, compose_run, read_log, read_status, train_cli, train_forked

from deconcnn.runconfig import compose_run_config
from deconcnn.training.run import train

STEPS = 32  # 2 epochs x 16 steps


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GradNormWitness]:
    run_dir = tmp_path_factory.mktemp("run")
    witness = GradNormWitness()
    assert train(compose_run(run_dir), extra_callbacks=[witness]) == "completed"
    return run_dir, witness


def test_every_train_step_logged_exactly_once(finished_run):
    records = [r for r in read_log(finished_run[0]) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(STEPS))
    for r in records:
        assert r["loss_train_bits"] == pytest.approx(r["loss_train_nats"] / math.log(2), abs=1e-6)
        assert 0.0 <= r["acc_train"] <= 1.0
        assert r["lr"] > 0 and r["wd"] == pytest.approx(5e-4)
        assert r["epoch"] == r["step"] // 16
        assert r["epoch_frac"] == pytest.approx((r["step"] + 1) / 16)


def test_validation_four_times_per_epoch_with_norms(finished_run):
    run_dir, witness = finished_run
    vals = [r for r in read_log(run_dir) if r["kind"] == "val"]
    assert [r["epoch_frac"] for r in vals] == [0.25 * i for i in range(1, 9)]
    for r in vals:
        # A val record at step s describes the weights after s updates; its grad_norm is the
        # gradient of the update that produced them (optimizer step s - 1), before clipping.
        assert r["grad_norm"] > 0
        assert r["grad_norm"] == pytest.approx(witness.norms[r["step"] - 1], rel=1e-5)
        assert r["weight_norm"] > 0
        assert r["loss_val_bits"] == pytest.approx(r["loss_val_nats"] / math.log(2), abs=1e-6)


def test_checkpoint_sizes_are_sizes_on_disk(finished_run):
    run_dir = finished_run[0]
    latest: dict[str, dict] = {}
    for r in read_log(run_dir):
        if r["kind"] == "checkpoint":
            latest[r["path"]] = r
    on_disk = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "checkpoints/last.ckpt" in on_disk and len(on_disk) == 4  # top 3 + last
    for path in on_disk:
        size_mb = (run_dir / path).stat().st_size / 2**20
        assert latest[path]["checkpoint_size_mb"] == pytest.approx(size_mb, abs=1e-9)


def test_every_record_is_stamped(finished_run):
    for r in read_log(finished_run[0]):
        assert {"kind", "step", "epoch", "epoch_frac", "time"} <= r.keys()


def test_run_json_completed(finished_run):
    status = read_status(finished_run[0])
    assert status["status"] == "completed" and status["last_step"] == STEPS and status["attempt"] == 1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_logs_every_step_once(tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, f"hydra.run.dir={run_dir}", "callbacks.loss_slope_logger.flush_every_n_steps=3"]
    # Killed at step 27: the last checkpoint is at step 24, and steps 25-26 were already flushed.
    log = tmp_path / "run.log"
    killed = train_forked(
        [*common, "+callbacks.kill._target_=fault_callbacks.KillAtStep", "+callbacks.kill.step=27"], log
    )
    assert killed == -9, log.read_text()[-2000:]
    before = read_log(run_dir)
    assert any(r["kind"] == "train" and r["step"] > 24 for r in before)
    assert read_status(run_dir)["status"] == "running"

    assert train_forked(common, log) == 0, log.read_text()[-2000:]
    records = read_log(run_dir)
    train_steps = Counter(r["step"] for r in records if r["kind"] == "train")
    assert sorted(train_steps) == list(range(STEPS)) and set(train_steps.values()) == {1}
    assert [r["epoch_frac"] for r in records if r["kind"] == "val"] == [0.25 * i for i in range(1, 9)]
    status = read_status(run_dir)
    assert status["status"] == "completed" and status["attempt"] == 2
    assert status["resumed_from_step"] == 24


def test_diverging_run_ends_diverged_with_its_step(tmp_path):
    status = train(compose_run(tmp_path, ["optim.lr=1e12", "schedule.warmup_epochs=0", "trainer.max_epochs=1"]))
    assert status == "diverged"
    run = read_status(tmp_path)
    assert run["status"] == "diverged" and run["diverged_step"] is not None
    train_records = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    assert train_records[-1]["step"] >= run["diverged_step"]
    bad = next(r for r in train_records if r["step"] == run["diverged_step"])
    assert bad["loss_train_nats"] is None  # written as JSON null, not a NaN token


def test_raising_run_ends_failed_with_the_error(tmp_path):
    cfg = compose_run(
        tmp_path,
        [
            "trainer.max_epochs=1",
            "+callbacks.boom._target_=fault_callbacks.RaiseAtStep",
            "+callbacks.boom.step=3",
            "+callbacks.boom.message=disk on fire",
        ],
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(cfg)
    run = read_status(tmp_path)
    assert run["status"] == "failed" and "disk on fire" in run["error"] and run["last_step"] == 3
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "train"] == [0, 1, 2]


@pytest.mark.parametrize("name", ["base", "adamw", "bn_off", "narrow"])
def test_every_experiment_composes_and_instantiates(tmp_path, name):
    cfg = compose_run(tmp_path, [f"experiment=loss_lin_slope_{name}", "data=synthetic"])
    assert cfg.trainer.val_check_interval == 0.25
    instantiate(cfg.model), instantiate(cfg.optim), instantiate(cfg.data)
    for callback in cfg.callbacks.values():
        instantiate(callback)
    instantiate(cfg.metrics_log)


def test_variants_differ_as_the_experiment_says(tmp_path):
    def variant(name):
        # Without the tiny-run overrides, which would replace the variants' own widths.
        return compose_run_config([f"experiment=loss_lin_slope_{name}", f"run_dir={tmp_path}"])

    base, adamw, bn_off, narrow = (variant(n) for n in ("base", "adamw", "bn_off", "narrow"))
    assert base.variant == "S-core" and base.optim._target_ == "torch.optim.SGD"
    assert base.optim.momentum == 0.9 and not base.optim.nesterov
    assert base.trainer.gradient_clip_val is None and base.model.width == 1.0
    assert adamw.optim._target_ == "torch.optim.AdamW" and list(adamw.optim.betas) == [0.9, 0.999]
    assert bn_off.model.norm == "none" and bn_off.trainer.gradient_clip_val == 1.0
    assert narrow.model.width == 0.5 and narrow.model.norm == "batchnorm"
    assert {c.variant for c in (base, adamw, bn_off, narrow)} == {"S-core", "S-adamw", "S-bn-off", "S-narrow"}


@pytest.mark.slow
def test_channels_last_and_bf16_switches_train(tmp_path):
    status = train(
        compose_run(tmp_path, ["trainer.max_epochs=1", "channels_last=true", "trainer.precision=bf16-mixed"])
    )
    assert status == "completed"
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "train"] == list(range(16))


def test_a_run_started_by_hand_says_its_data_first_and_keeps_everything_in_its_directory(tmp_path):
    run_dir = tmp_path / "myrun"
    result = train_cli([*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("deconcnn-train: data: SYNTHETIC data, not CIFAR-10: 160 generated"), first
    assert read_status(run_dir)["data"] == first.removeprefix("deconcnn-train: data: ")
    assert {p.name for p in run_dir.iterdir()} >= {".hydra", "stdout.log", "metrics.jsonl", "run.json", "checkpoints"}
    log = (run_dir / "stdout.log").read_text()
    assert first in log
    last = result.stdout.splitlines()[-1]  # one closing line: state, steps, last loss, where the logs are
    loss = [r for r in read_log(run_dir) if r["kind"] == "train"][-1]["loss_train_nats"]
    assert last == (
        f"deconcnn-train: completed at step 16, last training loss {loss:.4g} nats; logs in {run_dir}: metrics.jsonl"
    )
    assert last in log
    for hint in ("srun", "litlogger", "logging interval", "LeafSpec"):  # Lightning's hints, filtered
        assert hint not in log + result.stderr, hint


def test_run_dir_alone_is_refused_with_the_setting_that_keeps_files_together(tmp_path):
    result = train_cli([*TINY, f"run_dir={tmp_path}"])
    assert result.returncode == 2 and f"set hydra.run.dir={tmp_path} instead" in result.stderr


def test_a_second_process_on_the_same_run_is_refused_before_it_touches_anything(tmp_path):
    import fcntl

    from deconcnn.training.run import TRAIN_LOCK

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / TRAIN_LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = train_cli([*TINY, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2 and "another process trains" in result.stderr
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "metrics.jsonl").exists()
