"""CurvatureMonitor and NoiseMonitor on real tiny runs: exact schedules, stamps, no side effects."""

from __future__ import annotations

import io
import math

import pytest
import torch
from runs import compose_run, read_log

from deconcnn.training.run import train

CURV = [
    "+callbacks.curvature._target_=deconcnn.callbacks.curvature_monitor.CurvatureMonitor",
    "+callbacks.curvature.compute_every_n_steps=5",
    "+callbacks.curvature.batch_size=8",
    "+callbacks.curvature.eig_max_iter=8",
    "+callbacks.curvature.trace_max_probes=4",
]
STAMPS = {"step", "epoch", "epoch_frac", "time"}


def _final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.slow
def test_curvature_records_at_steps_0_5_10_of_a_12_step_run_without_changing_training(tmp_path):
    common = ["trainer.max_epochs=1", "+trainer.max_steps=12", "trainer.val_check_interval=1.0"]
    with_mon, without = tmp_path / "with", tmp_path / "without"
    assert train(compose_run(with_mon, [*common, *CURV])) == "completed"
    assert train(compose_run(without, common)) == "completed"

    curv = [r for r in read_log(with_mon) if r["kind"] == "curvature"]
    assert [r["step"] for r in curv] == [0, 5, 10]
    for r in curv:
        assert r.keys() >= STAMPS
        assert r["epoch"] == 0 and r["epoch_frac"] == pytest.approx(r["step"] / 16)
        assert r["bn_mode"] == "train"
        for key in ("lambda_max", "lambda_max_residual", "hessian_trace", "trace_se"):
            assert math.isfinite(r[key]), key
        assert r["lambda_max_n_hvp"] >= 1 and r["trace_probes"] >= 1
        assert r["curv_n_hvp"] == r["lambda_max_n_hvp"] + r["hessian_trace_n_hvp"]
        assert r["lambda_max_method"] == "lanczos_la" and r["hessian_trace_method"] == "deflated"
        assert r["trace_lo"] < r["hessian_trace"] < r["trace_hi"] and r["trace_df"] >= 1
    # the first record's count is planned by a pilot probe, later ones by the previous record
    assert [r["hessian_trace_pilot_probes"] for r in curv] == [1, 0, 0]
    assert [r["hessian_trace_n_hvp"] - r["trace_probes"] for r in curv] == [1, 0, 0]
    assert [r["lambda_max_warm_start"] for r in curv] == [False, False, False]  # off by default

    # The monitor leaves training untouched: same losses, weights and BN running statistics.
    def losses(d):
        return [(r["step"], r["loss_train_nats"]) for r in read_log(d) if r["kind"] == "train"]

    assert losses(with_mon) == losses(without)
    a, b = _final_state(with_mon), _final_state(without)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_warm_start_on_request_seeds_every_record_after_the_first(tmp_path):
    overrides = ["trainer.max_epochs=1", "+trainer.max_steps=12", *CURV, "+callbacks.curvature.warm_start=true"]
    assert train(compose_run(tmp_path, overrides)) == "completed"
    curv = [r for r in read_log(tmp_path) if r["kind"] == "curvature"]
    assert [(r["step"], r["lambda_max_warm_start"]) for r in curv] == [(0, False), (5, True), (10, True)]


@pytest.mark.slow
def test_noise_records_after_epochs_2_and_4_of_a_5_epoch_run(tmp_path):
    # 64 samples - 32 validation = 32 training samples: 4 steps of 8 per epoch. The noise's gradient
    # batch is all 32: on 8 the |G|^2 estimate sat near 0 and its sign followed the torch thread count.
    cfg = compose_run(
        tmp_path,
        [
            "data.source.num_samples=64",
            "trainer.max_epochs=5",
            "trainer.val_check_interval=1.0",
            "+callbacks.noise._target_=deconcnn.callbacks.noise_monitor.NoiseMonitor",
            "+callbacks.noise.grad_batch_size=32",
            "+callbacks.noise.min_points=10",
        ],
    )
    assert train(cfg) == "completed"
    noise = [r for r in read_log(tmp_path) if r["kind"] == "noise"]
    assert [(r["epoch"], r["epoch_frac"], r["step"]) for r in noise] == [(1, 2.0, 8), (3, 4.0, 16)]
    for r in noise:
        assert r.keys() >= STAMPS
        assert r["n_losses"] == r["step"]  # fewer than 512 batches so far: all of them
        assert r["grad_batch_size"] == 32 and r["grad_bn_mode"] == "batch_stats_frozen"
        assert math.isfinite(r["grad_var"]) and r["grad_var"] > 0
        assert math.isfinite(r["grad_trace_cov"]) and math.isfinite(r["grad_mean_sq_norm"])
        assert (r["noise_scale"] is None) == ("not resolved" in (r["reason"] or ""))
    first, second = noise
    # after epoch 2 only 8 losses (< min_points=10): loss-noise values null, with the reason
    assert first["resid_power"] is None and first["psd_tail"] is None
    assert "only 8 losses" in first["reason"]
    # after epoch 4, 16 losses: every value resolved, and no reason
    assert second["reason"] is None and math.isfinite(second["noise_scale"])
    for key in ("resid_power", "psd_tail", "psd_tail_ratio", "psd_total"):
        assert math.isfinite(second[key]) and second[key] >= 0, key
    assert second["psd_band_lo"] == pytest.approx(0.375) and second["psd_band_hi"] == 0.5


def test_curvature_monitor_checkpoints_the_state_the_next_record_depends_on():
    """The previous record's eigenvector (warm start) and trace variance (probe count) go into the
    checkpoint on the CPU and come back: the resumed run's next record is the uninterrupted one's
    (end to end: tests/training/test_resume.py, which runs with warm_start on)."""
    from deconcnn.callbacks.curvature_monitor import CurvatureMonitor

    mon = CurvatureMonitor(warm_start=True)
    assert mon.state_dict() == {"last_step": None, "trace_rel_var": None, "warm_vector": None}
    mon._last_step, mon._trace_rel_var, mon._v0 = 500, 0.37, torch.linspace(-1, 1, 7)
    state = mon.state_dict()
    assert state["warm_vector"].device.type == "cpu"
    back = CurvatureMonitor(warm_start=True)
    back.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert back._last_step == 500 and back._trace_rel_var == 0.37
    assert torch.equal(back._v0, mon._v0)


def _saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
