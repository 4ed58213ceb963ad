"""NoiseMonitor on a real run: exactly after epochs 2 and 4, stamped, BN statistics untouched."""

from __future__ import annotations

import math

import pytest
from runs import compose_run, read_log

from deconcnn.train import train


@pytest.mark.slow
def test_noise_records_after_epochs_2_and_4_of_a_5_epoch_run(tmp_path):
    cfg = compose_run(
        tmp_path,
        [
            "trainer.max_epochs=5",
            "trainer.val_check_interval=1.0",
            "+callbacks.noise._target_=deconcnn.callbacks.noise_monitor.NoiseMonitor",
            "+callbacks.noise.grad_batch_size=16",
        ],
    )
    assert train(cfg) == "completed"
    noise = [r for r in read_log(tmp_path) if r["kind"] == "noise"]
    assert [(r["epoch"], r["epoch_frac"], r["step"]) for r in noise] == [(1, 2.0, 32), (3, 4.0, 64)]
    for r in noise:
        assert {"step", "epoch", "epoch_frac", "time"} <= r.keys()
        assert r["n_losses"] == r["step"]  # fewer than 512 batches so far: all of them, and it says so
        assert r["reason"] is None
        for key in ("resid_power", "psd_tail", "psd_tail_ratio", "grad_var", "grad_trace_cov"):
            assert math.isfinite(r[key]) and r[key] >= 0
