"""The learning-rate schedule: linear warm-up then cosine to 0, stepped per batch, as logged by a run."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from runs import compose_run, read_log
from torch import nn

from deconcnn.training.module import ImageClassifier, warmup_cosine
from deconcnn.training.run import train


def test_warmup_is_linear_from_near_zero_to_one():
    w, total = 10, 100
    values = [warmup_cosine(s, w, total) for s in range(w)]
    assert values[0] == pytest.approx(1 / w)  # the first step already moves, by 1/w of the peak
    assert values[-1] == pytest.approx(1.0)
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert steps == pytest.approx([1 / w] * (w - 1))


def test_cosine_after_warmup_falls_monotonically_to_zero():
    w, total = 10, 100
    after = [warmup_cosine(s, w, total) for s in range(w, total + 1)]
    assert after[0] == pytest.approx(1.0)
    assert warmup_cosine(w + (total - w) // 2, w, total) == pytest.approx(0.5)
    assert after[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in itertools.pairwise(after))
    assert warmup_cosine(total + 50, w, total) == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end
    for s in range(w, total + 1):
        expected = 0.5 * (1 + math.cos(math.pi * (s - w) / (total - w)))
        assert warmup_cosine(s, w, total) == pytest.approx(expected)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, 0, 50) == 1.0
    assert warmup_cosine(25, 0, 50) == pytest.approx(0.5)


def _scheduled_lrs(warmup_epochs: float, steps_per_epoch: int, epochs: int, lr: float = 0.2) -> list[float]:
    """lr of every optimizer step from ImageClassifier.configure_optimizers, stepped per batch."""
    module = ImageClassifier(
        nn.Linear(2, 2), lambda params: torch.optim.SGD(params, lr=lr), warmup_epochs=warmup_epochs
    )
    datamodule = SimpleNamespace(train_dataloader=lambda: range(steps_per_epoch))
    module.trainer = SimpleNamespace(datamodule=datamodule, max_epochs=epochs, accumulate_grad_batches=1)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("warmup_epochs", "warmup_steps"), [(2, 20), (0.5, 5), (0, 0)])
def test_configure_optimizers_converts_warmup_epochs_to_steps(warmup_epochs, warmup_steps):
    lrs = _scheduled_lrs(warmup_epochs, steps_per_epoch=10, epochs=5)
    assert lrs == pytest.approx([0.2 * warmup_cosine(s, warmup_steps, 50) for s in range(50)])
    assert max(lrs) == pytest.approx(0.2)


def test_logged_lr_of_a_real_run_follows_the_schedule(tmp_path):
    """A tiny run (2 epochs x 16 steps, 1 warm-up epoch): the lr logged with every batch."""
    cfg = compose_run(tmp_path, ["trainer.val_check_interval=1.0", "optim.lr=0.1"])
    assert train(cfg) == "completed"
    records = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    steps = [r["step"] for r in records]
    lrs = [r["lr"] for r in records]
    base, warmup, total = 0.1, 16, 32
    assert steps == list(range(total))
    assert lrs[0] == pytest.approx(base / warmup)  # the lr the first batch was trained with
    assert max(lrs) == pytest.approx(base) and lrs.index(max(lrs)) == warmup - 1
    assert lrs[warmup] == pytest.approx(base)  # the first cosine step is still the peak
    assert 0 < lrs[-1] < 0.01 * base  # last step near 0
    assert all(b > a for a, b in itertools.pairwise(lrs[:warmup]))
    assert all(b <= a for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert lrs == pytest.approx([base * warmup_cosine(s, warmup, total) for s in range(total)], rel=1e-9)
