"""deconcnn-train: the Hydra app for one instrumented run.

Composes the config, instantiates everything by `_target_`, resumes from `last.ckpt` when the run
directory has one, fits, and keeps `run.json` saying how the run ended.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from deconcnn.callbacks.loss_slope_logger import TrainingDiverged
from deconcnn.runlog.metrics_log import METRICS_FILE, truncate_for_resume
from deconcnn.runlog.metrics_reader import iter_records
from deconcnn.runlog.run_status import RunStatusFile
from deconcnn.training.data import DataNotFoundError
from deconcnn.training.module import ImageClassifier

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class ConfigError(ValueError):
    """A config value that would make the run meaningless."""


def check_config(cfg: DictConfig) -> None:
    """Reject values the libraries would accept silently or fail on late."""
    checks = [
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}"),
        (cfg.model.width > 0, f"model.width must be > 0, got {cfg.model.width}"),
        (cfg.model.norm in ("batchnorm", "none"), f"model.norm must be batchnorm or none, got {cfg.model.norm}"),
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (cfg.trainer.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}"),
        (cfg.schedule.warmup_epochs >= 0, f"schedule.warmup_epochs must be >= 0, got {cfg.schedule.warmup_epochs}"),
    ]
    clip = cfg.trainer.get("gradient_clip_val")
    checks.append((clip is None or clip > 0, f"trainer.gradient_clip_val must be > 0 or null, got {clip}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def train(cfg: DictConfig) -> str:
    """Run one training run to its end; returns the final status written to run.json."""
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data before anything is marked running
    module = ImageClassifier(instantiate(cfg.model), instantiate(cfg.optim),
                             warmup_epochs=cfg.schedule.warmup_epochs, channels_last=cfg.channels_last)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                      logger=[instantiate(cfg.metrics_log)])

    ckpt = run_dir / LAST_CHECKPOINT
    resume_step = None
    if cfg.resume and ckpt.is_file():
        resume_step = checkpoint_step(ckpt)
        if (run_dir / METRICS_FILE).exists():
            truncate_for_resume(run_dir, resume_step, list(iter_records(run_dir / METRICS_FILE)))
    status = RunStatusFile(run_dir, cfg.run_id)
    status.start(resumed_from_step=resume_step)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt if resume_step is not None else None)
    except TrainingDiverged as diverged:
        status.finish("diverged", diverged.step, diverged_step=diverged.step)
        print(f"deconcnn-train: run diverged at step {diverged.step} ({run_dir})", file=sys.stderr)
        return "diverged"
    except BaseException as error:
        status.finish("failed", trainer.global_step, error=f"{type(error).__name__}: {error}")
        raise
    status.finish("completed", trainer.global_step)
    return "completed"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    try:
        return train(cfg)
    except (ConfigError, DataNotFoundError) as error:
        print(f"deconcnn-train: error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
