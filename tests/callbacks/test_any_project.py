"""The callbacks in a plain Lightning project: no datamodule, no `model`/`criterion` attributes,
`training_step` returning a plain loss, and loggers other than (or besides) the JSONL log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from deconcnn.callbacks.curvature_monitor import CurvatureMonitor
from deconcnn.callbacks.loss_slope_logger import LossSlopeLogger
from deconcnn.callbacks.metrics_logger import MetricsJsonlLogger
from deconcnn.callbacks.noise_monitor import NoiseMonitor
from deconcnn.runlog import schema

STEPS = 16  # 2 epochs x 8 batches of 8
LOG_EVERY = 4
CURVATURE_STEPS = [0, 5, 10, 15]


class PlainClassifier(pl.LightningModule):
    """Nothing deconcnn knows of: the loss is computed inline and returned as a plain tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(root: Path, loggers: list[Logger] | bool, monitor_batch: object = "given") -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 2, 2), torch.randint(0, 3, (64,))
    given = (x[:16], y[:16]) if monitor_batch == "given" else None
    trainer = pl.Trainer(
        default_root_dir=root,
        logger=loggers,
        max_epochs=2,
        log_every_n_steps=LOG_EVERY,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            LossSlopeLogger(flush_every_n_steps=5),
            CurvatureMonitor(compute_every_n_steps=5, eig_max_iter=8, trace_max_probes=4, batch=given),
            NoiseMonitor(log_every_n_epochs=1, min_points=4, batch=given),
        ],
    )
    trainer.fit(PlainClassifier(), DataLoader(TensorDataset(x, y), batch_size=8))


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_callbacks_log_to_a_csv_logger_alone(tmp_path):
    csv_logger = CSVLogger(tmp_path)
    fit(tmp_path, [csv_logger])
    rows = read_csv(csv_logger)
    # Per-batch records thinned as Lightning thins its own logging: update numbers 4, 8, 12, 16.
    assert sorted(column(rows, "train/loss_train_nats")) == [3, 7, 11, 15]
    assert sorted(column(rows, "train/lr")) == [3, 7, 11, 15]
    assert "train/acc_train" not in rows[0]  # no "acc" from training_step: null, not logged
    lam = column(rows, "curvature/lambda_max")
    assert sorted(lam) == CURVATURE_STEPS and all(v > 0 for v in lam.values())
    assert set(column(rows, "curvature/lambda_max_converged").values()) <= {0.0, 1.0}  # bools as 0/1
    assert "curvature/lambda_max_method" not in rows[0]  # strings are left out
    grad_var = column(rows, "noise/grad_var")
    assert sorted(grad_var) == [8, 16] and all(v > 0 for v in grad_var.values())
    assert sorted(column(rows, "noise/n_losses").values()) == [8.0, 16.0]
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_jsonl_log_gets_every_record_and_csv_the_thinned_series(tmp_path):
    csv_logger, jsonl = CSVLogger(tmp_path / "csv"), MetricsJsonlLogger(tmp_path / "run")
    fit(tmp_path, [csv_logger, jsonl])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if schema.problems(r)] == []
    for kind in ("train", "curvature", "noise"):  # every key of the schema, null or not
        assert all(set(schema.KINDS[kind].required) <= r.keys() for r in records if r["kind"] == kind)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(STEPS))
    assert all(r["acc_train"] is None for r in train)
    assert [r["step"] for r in records if r["kind"] == "curvature"] == CURVATURE_STEPS
    assert [r["epoch_frac"] for r in records if r["kind"] == "noise"] == [1.0, 2.0]

    rows = read_csv(csv_logger)
    loss = column(rows, "train/loss_train_nats")
    assert sorted(loss) == [3, 7, 11, 15]
    for step, value in loss.items():
        assert value == pytest.approx(train[step]["loss_train_nats"], rel=1e-12)
    lam = column(rows, "curvature/lambda_max")
    for r in records:
        if r["kind"] == "curvature":
            assert lam[r["step"]] == pytest.approx(r["lambda_max"], rel=1e-12)


def test_no_logger_at_all_trains(tmp_path):
    fit(tmp_path, False)


def test_a_monitor_without_a_batch_says_how_to_give_one(tmp_path):
    with pytest.raises(RuntimeError, match=r"batch=\(inputs, labels\).*fixed_batch\(size, seed\)"):
        fit(tmp_path, [CSVLogger(tmp_path)], monitor_batch=None)


class ValidatedClassifier(PlainClassifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("loss_val_nats", nn.functional.cross_entropy(self(x), y))


def test_time_based_validation_gets_a_grad_norm(tmp_path):
    # Lightning leaves val_check_batch None for a time-based interval; the logger used to take int(None).
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 3, 2, 2), torch.randint(0, 3, (64,))), batch_size=8)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=[MetricsJsonlLogger(tmp_path / "run")],
        max_epochs=1,
        val_check_interval="00:00:00:00",  # as often as the clock allows: after every batch
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LossSlopeLogger()],
    )
    trainer.fit(ValidatedClassifier(), loader, loader)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert val and all(r["grad_norm"] > 0 for r in val)
