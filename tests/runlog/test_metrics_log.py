"""MetricsLog: strict JSON lines, one write and one device-to-host transfer per flush, resume truncation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from deconcnn.runlog.metrics_log import METRICS_FILE, MetricsLog, truncate_to_resume_point
from deconcnn.runlog.metrics_reader import MetricsReader, iter_records


def strict_lines(path: Path, skip_last: bool = False) -> list[dict]:
    """Parse every line (but a cut-off last one), refusing the NaN/Infinity tokens Python's json
    would otherwise accept."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-strict JSON token {token}")

    lines = path.read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in (lines[:-1] if skip_last else lines)]


# --------------------------------------------------------------------------------------------
# Host transfers, counted on a tensor type that behaves as if it lived on an accelerator
# --------------------------------------------------------------------------------------------

_HOST_READS = {
    torch.Tensor.cpu: "cpu",
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__float__: "float",
    torch.Tensor.__int__: "int",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__index__: "index",
    torch.Tensor.__array__: "array",
    torch.Tensor.__format__: "format",
    torch.Tensor.__repr__: "repr",
}


def _to_host(args: tuple, kwargs: dict) -> bool:
    targets = [*args[1:], kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets)


class DeviceTensor(torch.Tensor):
    """A tensor that counts every read of its values by the host (what costs a sync on a GPU).

    Operations on it (stack, reshape, dtype casts, arithmetic) give DeviceTensors again, as
    operations on CUDA tensors stay on the GPU; reading values (.cpu(), .to("cpu"), .item(),
    .tolist(), float(), ...) is logged in `transfers` and gives ordinary host tensors and numbers.
    """

    transfers: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _HOST_READS.get(func)
        if name is None and func is torch.Tensor.to and _to_host(args, kwargs):
            name = "to(cpu)"
        if name is None:
            return super().__torch_function__(func, types, args, kwargs)
        cls.transfers.append(name)
        with torch._C.DisableTorchFunctionSubclass():
            plain = args[0].as_subclass(torch.Tensor)
        return func(plain, *args[1:], **kwargs)


def on_device(value: float, dtype: torch.dtype = torch.float32) -> DeviceTensor:
    return torch.tensor(value, dtype=dtype).as_subclass(DeviceTensor)


@pytest.fixture
def transfers() -> list[str]:
    DeviceTensor.transfers = []
    return DeviceTensor.transfers


def test_device_tensor_counts_host_reads(transfers):
    x = on_device(2.0)
    y = torch.stack([x * 2, x.reshape(()).to(torch.float64)])
    assert isinstance(y, DeviceTensor) and transfers == []
    assert y.cpu().tolist() == [4.0, 2.0] and transfers == ["cpu"]  # the host copy's tolist is free
    float(x), x.item(), x.to("cpu"), x.to(device=torch.device("cpu"))
    assert transfers == ["cpu", "float", "item", "to(cpu)", "to(cpu)"]


def test_append_reads_nothing_and_flush_does_one_transfer(tmp_path, transfers):
    log = MetricsLog(tmp_path)
    n = 120
    for step in range(n):
        loss = on_device(2.5 - step / 100)
        log.append(
            {
                "kind": "train",
                "step": step,
                "epoch": 0,
                "epoch_frac": step / n,
                "time": 1.0,
                "loss_train_nats": loss,
                "loss_train_bits": loss.double() / math.log(2),
                "acc_train": on_device(step % 8 / 8),
                "lr": 0.1,
                "wd": 5e-4,
            }
        )
    assert transfers == [] and log.pending == n
    written = log.flush()
    assert len(transfers) == 1, transfers  # one stacked copy for all 3 x 120 tensor values
    assert log.pending == 0 and len(written) == n
    records = strict_lines(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(n))
    for step, r in enumerate(records):
        assert r["loss_train_nats"] == pytest.approx(2.5 - step / 100, rel=1e-6)
        assert r["loss_train_bits"] == pytest.approx(r["loss_train_nats"] / math.log(2), abs=1e-6)
        assert r["acc_train"] == step % 8 / 8 and r["lr"] == 0.1
    assert written == records  # flush returns the records with host values
    log.close()
    assert len(transfers) == 1  # nothing pending: close transfers nothing


def test_flush_with_no_tensors_transfers_nothing(tmp_path, transfers):
    log = MetricsLog(tmp_path)
    log.append({"kind": "checkpoint", "step": 3, "checkpoint_size_mb": 1.5})
    log.flush()
    log.close()
    assert transfers == [] and strict_lines(tmp_path / METRICS_FILE)[0]["checkpoint_size_mb"] == 1.5


class CountingFile:
    def __init__(self, inner) -> None:
        self.inner, self.writes = inner, []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_flush_writes_all_pending_in_one_call(tmp_path):
    log = MetricsLog(tmp_path)
    counting = CountingFile(log._file)
    log._file = counting
    for step in range(7):
        log.append({"kind": "train", "step": step, "loss_train_nats": torch.tensor(1.0)})
    log.flush()
    assert len(counting.writes) == 1 and counting.writes[0].count(b"\n") == 7
    log.flush()  # nothing pending: no write
    assert len(counting.writes) == 1
    log.close()


def test_non_finite_values_are_written_as_null(tmp_path):
    log = MetricsLog(tmp_path)
    log.append(
        {
            "kind": "train",
            "step": 0,
            "a": math.nan,
            "b": math.inf,
            "c": -math.inf,
            "d": 1.25,
            "t_nan": torch.tensor(math.nan),
            "t_inf": torch.tensor(math.inf),
            "t_ok": torch.tensor(0.5),
            "t_int": torch.tensor(3),
        }
    )
    log.close()
    (record,) = strict_lines(tmp_path / METRICS_FILE)
    assert record == {
        "kind": "train",
        "step": 0,
        "a": None,
        "b": None,
        "c": None,
        "d": 1.25,
        "t_nan": None,
        "t_inf": None,
        "t_ok": 0.5,
        "t_int": 3.0,
    }


def test_flushed_lines_are_on_disk_before_close(tmp_path):
    path = tmp_path / METRICS_FILE
    log = MetricsLog(tmp_path)
    log.append({"kind": "train", "step": 0, "x": torch.tensor(1.0)})
    assert list(iter_records(path)) == []  # buffered until a flush, by design
    log.flush()
    assert [r["step"] for r in iter_records(path)] == [0]  # another reader sees it while the run goes on
    log.append({"kind": "val", "step": 1, "x": 2.0})
    log.flush()
    reader = MetricsReader(path)
    assert [r["kind"] for r in reader.records()] == ["train", "val"] and reader.bad_lines == 0
    log.close()


def test_a_new_log_appends_to_the_existing_file(tmp_path):
    first = MetricsLog(tmp_path)
    first.append({"kind": "train", "step": 0})
    first.close()
    second = MetricsLog(tmp_path)
    second.append({"kind": "train", "step": 1})
    second.close()
    assert [r["step"] for r in strict_lines(tmp_path / METRICS_FILE)] == [0, 1]


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def _interrupted_attempt(tmp_path) -> tuple[int, list[dict]]:
    """Train steps 0..11, validation and two checkpoint files at 4 and 8 (the checkpoint's state
    taken between its two files' records, as Lightning does), curvature at 8 after the checkpoint,
    then a kill that left half a line. Returns the log offset stored in the step-8 checkpoint."""
    log = MetricsLog(tmp_path)
    offset = None
    for step in range(12):
        if step == 8:
            log.append({"kind": "curvature", "step": 8, "lambda_max": 12.0})
        log.append({"kind": "train", "step": step, "loss_train_nats": 2.0 - step / 10})
        if step + 1 in (4, 8):  # validation after the batch of step s describes the weights at s + 1
            log.append({"kind": "val", "step": step + 1, "loss_val_nats": 1.5, "grad_norm": None})
            log.append({"kind": "checkpoint", "step": step + 1, "path": "checkpoints/top.ckpt"})
            position = log.sync()
            log.append({"kind": "checkpoint", "step": step + 1, "path": "checkpoints/last.ckpt"})
            offset = position if step + 1 == 8 else offset
    log.close()
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "step": 12, "lo')
    assert offset is not None
    return offset, strict_lines(tmp_path / METRICS_FILE, skip_last=True)


def test_sync_returns_the_size_of_everything_logged(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"kind": "train", "step": 0, "loss_train_nats": torch.tensor(1.0)})
    assert log.sync() == (tmp_path / METRICS_FILE).stat().st_size > 0
    log.close()


def test_truncate_to_resume_point_drops_what_the_resumed_attempt_redoes(tmp_path):
    offset, records = _interrupted_attempt(tmp_path)
    dropped = truncate_to_resume_point(tmp_path, offset, 8)
    kept = strict_lines(tmp_path / METRICS_FILE)  # the half line is gone, every line parses
    assert [r["step"] for r in kept if r["kind"] == "train"] == list(range(8))
    assert [(r["kind"], r["step"], r.get("path")) for r in kept if r["kind"] != "train"] == [
        ("val", 4, None),
        ("checkpoint", 4, "checkpoints/top.ckpt"),
        ("checkpoint", 4, "checkpoints/last.ckpt"),
        ("val", 8, None),
        ("checkpoint", 8, "checkpoints/top.ckpt"),
        ("checkpoint", 8, "checkpoints/last.ckpt"),  # written after the state was taken: kept
    ]
    assert dropped == len(records) + 1 - len(kept)  # train 8..11, curvature at 8, the half line
    assert not list(tmp_path.glob(".*.tmp"))

    # The resumed attempt appends after what was kept: every train step exactly once.
    log = MetricsLog(tmp_path)
    for step in range(8, 12):
        log.append({"kind": "train", "step": step, "loss_train_nats": torch.tensor(1.0)})
    log.close()
    assert [r["step"] for r in strict_lines(tmp_path / METRICS_FILE) if r["kind"] == "train"] == list(range(12))


def test_truncate_to_step_zero_keeps_nothing(tmp_path):
    _interrupted_attempt(tmp_path)
    truncate_to_resume_point(tmp_path, 0, 0)
    assert (tmp_path / METRICS_FILE).read_text() == ""
