"""deconcnn-train: the Hydra app for one instrumented run.

Composes the config, resumes from the newest checkpoint of the run directory that loads (with the
metric log cut back to that checkpoint), fits, and keeps `run.json` saying how the run ended: every
way out after the run directory exists ends `completed`, `diverged` or `failed` with the error's
first line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from deconcnn.callbacks.loss_slope_logger import TrainingDiverged
from deconcnn.runconfig import CONF_DIR, ConfigError
from deconcnn.runlog.metrics_log import METRICS_FILE, truncate_to_resume_point
from deconcnn.runlog.run_status import RunStatusFile, first_line
from deconcnn.training.build import build_run
from deconcnn.training.checkpoints import ResumePoint, choose_resume_point
from deconcnn.training.data import DataNotFoundError


def resume_point(cfg: DictConfig, run_dir: Path) -> ResumePoint:
    if cfg.resume:
        return choose_resume_point(run_dir)
    if (run_dir / METRICS_FILE).exists():
        raise ConfigError(f"resume=false, but {run_dir} already holds a run ({METRICS_FILE}): its steps would be "
                          "logged twice; use another run_dir or delete that one")
    return ResumePoint(None)


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> str:
    """Run one training run to its end; returns the final status written to run.json."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = RunStatusFile(run_dir, cfg.run_id)
    status.start()
    step = 0
    trainer = None
    try:
        resume = resume_point(cfg, run_dir)
        step = resume.step
        truncate_to_resume_point(run_dir, resume.log_offset, resume.step)
        status.update(resumed_from_step=resume.step if resume.path else None,
                      resumed_from=resume.path.relative_to(run_dir).as_posix() if resume.path else None,
                      resume_note=resume.note)
        if resume.note:
            print(f"deconcnn-train: {resume.note}", file=sys.stderr, flush=True)
        datamodule, module, trainer = build_run(cfg, extra_callbacks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path)
    except TrainingDiverged as diverged:
        status.finish("diverged", diverged.step, diverged_step=diverged.step)
        print(f"deconcnn-train: run diverged at step {diverged.step} ({run_dir})", file=sys.stderr)
        return "diverged"
    except SIGTERMException:
        status.finish("failed", trainer.global_step if trainer else step,
                      error="terminated by SIGTERM (preempted, requeued or cancelled)")
        raise
    except BaseException as error:
        status.finish("failed", trainer.global_step if trainer else step, error=first_line(error))
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
