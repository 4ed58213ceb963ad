"""One training run, from its composed config to the status its run.json ends with.

Resumes from the newest checkpoint of the run directory that loads (with the metric log cut back to
that checkpoint), fits, and keeps `run.json` saying how the run ended: every way out after the run
directory exists ends `completed`, `diverged` or `failed` with the error's first line. `completed`
only once the metric log holds every training step exactly once; a run directory deleted or
replaced mid-run fails the run, which then writes nothing more anywhere (deconcnn.runlog.rundir).
deconcnn.train, the Hydra app, imports this module only once Hydra has composed the config.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from deconcnn.callbacks.loss_slope_logger import LossSlopeLogger, TrainingDiverged
from deconcnn.runconfig import ConfigError
from deconcnn.runlog.metrics_log import METRICS_FILE, truncate_to_resume_point, verify_train_steps
from deconcnn.runlog.metrics_reader import iter_records
from deconcnn.runlog.run_status import RunStatusFile, first_line
from deconcnn.runlog.rundir import RunFilesLost
from deconcnn.training.build import build_run
from deconcnn.training.checkpoints import ResumePoint, choose_resume_point

TRAIN_LOCK = ".train.lock"


class RunBusy(ConfigError):
    """Another live process trains this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One training process per run directory: a second one (a duplicate submission, a hand-started
    copy) is refused before it touches run.json or the log. The kernel drops the lock at exit."""
    with open(run_dir / TRAIN_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunBusy(
                f"another process trains {run_dir} ({handle.read().strip() or 'unknown'}): not started twice"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        yield


def resume_point(cfg: DictConfig, run_dir: Path) -> ResumePoint:
    if cfg.resume:
        return choose_resume_point(run_dir)
    if (run_dir / METRICS_FILE).exists():
        raise ConfigError(
            f"resume=false, but {run_dir} already holds a run ({METRICS_FILE}): its steps would be "
            "logged twice; use another run_dir or delete that one"
        )
    return ResumePoint(None)


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> str:
    """Run one training run to its end; returns the final status written to run.json."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _train_locked(cfg, run_dir, extra_callbacks)


def _train_locked(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Callback]) -> str:
    # CifarDataModule's source says what it holds (CIFAR-10 where, or synthetic); a user's datamodule
    # is named by its class.
    data = instantiate(cfg.data.source).describe() if "source" in cfg.data else str(cfg.data._target_)
    print(f"deconcnn-train: data: {data}", flush=True)
    status = RunStatusFile(run_dir, cfg.run_id)
    status.start(data=data)
    step = 0
    trainer = None
    try:
        resume = resume_point(cfg, run_dir)
        step = resume.step
        truncate_to_resume_point(run_dir, resume.log_offset, resume.step)
        status.update(
            resumed_from_step=resume.step if resume.path else None,
            resumed_from=resume.path.relative_to(run_dir).as_posix() if resume.path else None,
            resume_note=resume.note,
        )
        if resume.note:
            print(f"deconcnn-train: {resume.note}", file=sys.stderr, flush=True)
        datamodule, module, trainer = build_run(
            cfg, extra_callbacks, checkpoint_step=resume.step if resume.path else None, run_dir=status.run_dir
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path)
        per_batch = any(isinstance(callback, LossSlopeLogger) for callback in trainer.callbacks)  # type: ignore[attr-defined]
        log_bytes = verified_log(
            status.run_dir.path, trainer.global_step, per_batch, repeats=trainer.accumulate_grad_batches > 1
        )
        status.run_dir.check()
    except TrainingDiverged as diverged:
        status.finish("diverged", diverged.step, diverged_step=diverged.step)
        print(closing_line("diverged", diverged.step, run_dir, trainer), file=sys.stderr)
        return "diverged"
    except SIGTERMException:
        status.finish(
            "failed",
            trainer.global_step if trainer else step,
            error="terminated by SIGTERM (preempted, requeued or cancelled)",
        )
        raise
    except BaseException as error:
        status.finish("failed", trainer.global_step if trainer else step, error=first_line(error))
        raise
    status.finish("completed", trainer.global_step, log_bytes=log_bytes)
    print(closing_line("completed", trainer.global_step, run_dir, trainer), flush=True)
    return "completed"


def verified_log(run_dir: Path, steps: int, per_batch: bool, repeats: bool = False) -> int:
    """The metric log's size once it holds every one of the run's `steps` training steps once
    (`per_batch`: the run logs every batch; `repeats`: once or more, every batch of an accumulated
    step); RunFilesLost when it does not (the run is then failed, and a relaunch trains it again)."""
    log = run_dir / METRICS_FILE
    problem = verify_train_steps(log, steps, required=per_batch, repeats=repeats)
    if problem:
        raise RunFilesLost(f"training ended, but {problem}")
    return log.stat().st_size if log.is_file() else 0


def closing_line(state: str, step: int, run_dir: Path, trainer: pl.Trainer | None) -> str:
    """How the run ended, in one line: its state, steps, last training loss and where its logs are."""
    loss = None
    for record in iter_records(run_dir / METRICS_FILE):
        if record.get("kind") == "train":
            loss = record.get("loss_train_nats")
    logs = [METRICS_FILE]
    for logger in trainer.loggers if trainer else []:
        where = getattr(logger, "log_dir", None) or logger.save_dir
        if where and Path(where).resolve() != run_dir.resolve():
            logs.append(os.path.relpath(where, run_dir) + "/")
    loss_text = f"{loss:.4g} nats" if isinstance(loss, float) else "none"
    return (
        f"deconcnn-train: {state} at step {step}, last training loss {loss_text}; "
        f"logs in {run_dir}: {', '.join(dict.fromkeys(logs))}"
    )
