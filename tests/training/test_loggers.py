"""The `logger` config group: every logger gets the run's records, read back out of the files it
wrote (no network), and a run killed and resumed continues the same logger run.

One monitored tiny run with `logger=many` is SIGKILLed after its step-8 checkpoint and resumed;
each logger's values are compared with the finished metric log, the source of truth.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from runs import TINY, compose_run, read_log, read_status, train_forked

from deconcnn.runconfig import ConfigError
from deconcnn.training.build import build_run
from deconcnn.training.loggers import LOGGER_RUNS_FILE, ResumableCSVLogger

RESUME_STEP = 8  # the checkpoint before the kill (validation and checkpoint every 4 steps)
KILL_STEP = 11
LOGGED = [
    *TINY,
    "logger=many",
    "+trainer.log_every_n_steps=1",  # every per-batch record reaches the loggers, as in the JSONL log
    "callbacks=loss_lin_slope_monitors",
    "callbacks.curvature_monitor.compute_every_n_steps=24",  # steps 0 (first attempt) and 24 (resumed)
    "callbacks.curvature_monitor.batch_size=8",
    "callbacks.curvature_monitor.eig_max_iter=4",
    "callbacks.curvature_monitor.trace_max_probes=2",
    "callbacks.noise_monitor.log_every_n_epochs=1",
    "callbacks.noise_monitor.grad_batch_size=8",
    "callbacks.noise_monitor.min_points=4",
    "sweep=logger-test",
]
KINDS = ("train", "val", "curvature", "noise")
# Offline and on this machine only, whatever the developer's own settings.
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": ""}

Values = dict[tuple[int, str], list[float]]  # (step, "<kind>/<key>") -> every value logged there


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("loggers") / "lr0.1_s0"
    args = [*LOGGED, f"hydra.run.dir={run_dir}"]
    log = run_dir.parent / "train.log"
    killed = train_forked(
        [*args, "+callbacks.kill._target_=fault_callbacks.KillAtStep", f"+callbacks.kill.step={KILL_STEP}"],
        log,
        env=ENV,
    )
    assert killed == -9, log.read_text()
    first_ids = json.loads((run_dir / LOGGER_RUNS_FILE).read_text())
    # Resumed with a setting changed (as when a run is extended): MLflow keeps the first value.
    resumed = train_forked([*args, "callbacks.loss_slope_logger.flush_every_n_steps=5"], log, env=ENV)
    assert resumed == 0, log.read_text()
    closing = log.read_text().splitlines()[-1]
    assert closing.startswith("deconcnn-train: completed at step 32, last training loss ")
    assert closing.endswith(f"logs in {run_dir}: metrics.jsonl, csv/, tensorboard/, mlruns/"), closing
    assert read_status(run_dir)["resumed_from_step"] == RESUME_STEP
    assert json.loads((run_dir / LOGGER_RUNS_FILE).read_text()) == first_ids  # the same W&B and MLflow runs
    return run_dir


def truth(run_dir: Path) -> dict[tuple[int, str], float]:
    """Every numeric value of the metric log, keyed as the other loggers get it."""
    out = {}
    for record in read_log(run_dir):
        if record["kind"] in KINDS:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch", "epoch_frac", "time") and isinstance(value, (int, float)):
                    out[(record["step"], f"{record['kind']}/{key}")] = float(value)
    return out


def assert_matches(values: Values, run_dir: Path, *, once_after: int, rel: float = 1e-6, since: int = 0) -> None:
    """The logger holds every value of the metric log at its step (from step `since` on), nothing
    of another step, and each once except at steps from `once_after` to the kill (the killed
    attempt's, logged again)."""
    want = {k: v for k, v in truth(run_dir).items() if k[0] >= since}
    values = {k: v for k, v in values.items() if k[0] >= since}
    got = {k: v for k, v in values.items() if "/" in k[1] and k[1].split("/")[0] in KINDS}
    assert set(got) == set(want)
    assert {kind for _, kind in (k[1].split("/", 1) for k in want)} >= {"loss_train_nats", "lambda_max", "grad_var"}
    for key, logged in got.items():
        assert logged == pytest.approx([want[key]] * len(logged), rel=rel, abs=1e-9), key
        if not once_after <= key[0] < KILL_STEP:
            assert len(logged) == 1, key


@pytest.mark.slow
def test_csv_continues_its_file(resumed_run):
    values: Values = defaultdict(list)
    with open(resumed_run / "csv" / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value and key != "step":
                    values[(int(row["step"]), key)].append(float(value))
    assert_matches(values, resumed_run, once_after=RESUME_STEP)  # at most that step's training record twice


@pytest.mark.slow
def test_tensorboard_purges_what_the_killed_attempt_logged_after_the_checkpoint(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((resumed_run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one file per attempt, in one log directory
    accumulator = EventAccumulator(str(resumed_run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    values: Values = defaultdict(list)
    for tag in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(tag):
            values[(event.step, tag)].append(event.value)
    assert_matches(values, resumed_run, once_after=RESUME_STEP)  # float32 values, equal to the log's to 1e-6
    assert len(values[(RESUME_STEP + 1, "train/loss_train_nats")]) == 1  # the killed attempt's is purged


@pytest.mark.slow
def test_mlflow_logs_both_attempts_to_one_run(resumed_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the logger does for its default store
    client = MlflowClient(f"file:{resumed_run / 'mlruns'}")
    experiment = client.get_experiment_by_name("logger-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "lr0.1_s0" and run.data.params["optim/lr"] == "0.1"
    assert run.data.params["callbacks/loss_slope_logger/flush_every_n_steps"] == "50"  # not changed by the resume
    values: Values = defaultdict(list)
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            values[(metric.step, key)].append(metric.value)
    # MLflow cannot delete logged points: the steps the killed attempt logged after its checkpoint
    # (8..10) are there twice, with the same values (resume is exact).
    assert_matches(values, resumed_run, once_after=RESUME_STEP, rel=1e-5)
    assert len(values[(9, "train/loss_train_nats")]) == 2 and len(values[(20, "train/loss_train_nats")]) == 1


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of an offline W&B run file: a 7-byte header, then LevelDB's log format
    (32 KiB blocks; records split into FULL / FIRST, MIDDLE, LAST chunks with 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, chunk = struct.unpack("<IHB", data[pos : pos + 7])
        if chunk == 0:  # zero padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if chunk in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_resumes_the_same_run_offline(resumed_run):
    run_id = json.loads((resumed_run / LOGGER_RUNS_FILE).read_text())["wandb"]
    runs = sorted((resumed_run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2  # one offline directory per attempt, both of the one W&B run
    values: Values = defaultdict(list)
    # W&B's writer process loses what it held when the training process is SIGKILLed (here, all
    # of the first attempt); a run that ends or fails on its own writes everything.
    for path in runs[1:]:
        records = list(wandb_records(path))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert (run.run_id, run.display_name, run.run_group, run.project) == (
            run_id,
            "lr0.1_s0",
            "logger-test",
            "deconcnn",
        )
        for record in records:
            if record.WhichOneof("record_type") == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                for key, value in row.items():
                    values[(row["trainer/global_step"], key)].append(value)
    assert_matches(values, resumed_run, once_after=RESUME_STEP, rel=1e-5, since=RESUME_STEP + 1)
    resumed = {step for step, key in values if key == "train/loss_train_nats"}
    assert resumed == set(range(RESUME_STEP, 32))


def test_trainer_logger_as_a_lightning_user_writes_it(tmp_path):
    # It used to end in "Cannot merge DictConfig with ListConfig".
    cfg = compose_run(
        tmp_path,
        ["+trainer.logger._target_=pytorch_lightning.loggers.CSVLogger", f"+trainer.logger.save_dir={tmp_path}"],
    )
    _, _, trainer = build_run(cfg)
    assert [type(logger).__name__ for logger in trainer.loggers] == ["MetricsJsonlLogger", "CSVLogger"]


@pytest.mark.parametrize(
    ("logger", "package"), [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")]
)
def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, logger, package):
    monkeypatch.setitem(sys.modules, package, None)  # what an environment without it gives `import`
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ConfigError) as error:
        build_run(compose_run(tmp_path, [f"logger={logger}"]))
    assert str(error.value) == f"logger.{logger} needs the {logger} package: pip install 'deconcnn[{logger}]'"


def test_a_lightning_logger_s_missing_package_is_the_same_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = compose_run(tmp_path, ["+trainer.logger._target_=pytorch_lightning.loggers.WandbLogger"])
    with pytest.raises(ConfigError, match=r"^trainer.logger needs the wandb package: pip install 'deconcnn\[wandb\]'$"):
        build_run(cfg)


def test_csv_keeps_the_rows_up_to_the_checkpoint_and_drops_a_row_cut_by_the_kill(tmp_path):
    (tmp_path / "csv").mkdir()
    rows = "".join(f"{0.5 + step},{step}\n" for step in range(6))
    (tmp_path / "csv" / "metrics.csv").write_text("train/loss_train_nats,step\n" + rows + "0.25")  # cut mid-row
    logger = ResumableCSVLogger(str(tmp_path), checkpoint_step=3)
    logger.log_metrics({"train/loss_train_nats": 9.0}, step=4)
    logger.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        got = [(int(r["step"]), float(r["train/loss_train_nats"])) for r in csv.DictReader(handle)]
    assert got == [(0, 0.5), (1, 1.5), (2, 2.5), (3, 3.5), (4, 9.0)]
