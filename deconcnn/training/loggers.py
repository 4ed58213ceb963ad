"""The Lightning loggers a run adds to its metric log (conf/logger), and how each continues the same
run when the run resumes.

metrics.jsonl stays the source of truth; these loggers get what the callbacks log through
`trainer.loggers` (deconcnn.callbacks.metrics_logger.log_record) and Lightning's own `self.log`
values. A resumed attempt restarts at its checkpoint's step and logs the steps after it again, so
each logger is told that step (`checkpoint_step`) where it can drop what the killed attempt logged
after it (CSV rows, TensorBoard's `purge_step`), and W&B and MLflow continue the run whose id the
first attempt saved in `<run_dir>/loggers.json`.

At the checkpoint's step itself, records come both before the checkpoint (validation, which
triggers it) and after it (that step's training batch, a monitor firing at its start); these
loggers keep that whole step, so such a record may appear twice there, with equal values (resume
is exact). metrics.jsonl, cut back to the checkpoint's byte offset, holds each record once.
"""

from __future__ import annotations

import csv
import netrc
import os
import uuid
from argparse import Namespace
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.utils import get_class, instantiate
from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from deconcnn.runconfig import ConfigError, require_logger_extra
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.run_status import read_json

LOGGER_RUNS_FILE = "loggers.json"  # the W&B and MLflow run ids of this run directory
# The Lightning loggers that need a package of their own -> the extra that installs it.
EXTRA_OF: dict[type[Logger], str] = {TensorBoardLogger: "tensorboard", WandbLogger: "wandb", MLFlowLogger: "mlflow"}
WANDB_HOST = "api.wandb.ai"


class ContinuesAfterResume:
    """A logger whose constructor takes `checkpoint_step`: the step of the checkpoint a resumed
    attempt restarts from (None: the run starts from step 0), after which what an earlier attempt
    logged is logged again."""


def logger_specs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, config) of each logger the run adds: the `logger` group's, then `trainer.logger`'s
    (a `_target_` mapping, a list or a mapping of them: what a Lightning user would write)."""
    specs: list[tuple[str, DictConfig]] = []

    def add(prefix: str, node: Any) -> None:
        if node is None:
            return
        if isinstance(node, DictConfig) and "_target_" in node:
            specs.append((prefix, node))
        elif isinstance(node, DictConfig):
            for key, value in node.items():
                add(f"{prefix}.{key!s}", value)
        elif isinstance(node, ListConfig):
            for index, value in enumerate(node):
                add(f"{prefix}[{index}]", value)
        else:
            raise ConfigError(
                f"{prefix} must be a logger config with a _target_ (or a list of them), got {node!r}: "
                "metrics.jsonl is always written; add loggers with logger=csv, logger=[csv,tensorboard], ..."
            )

    for key, value in (cfg.get("logger") or {}).items():
        add(f"logger.{key}", value)
    add("trainer.logger", cfg.trainer.get("logger"))
    return specs


def make_loggers(specs: Iterable[tuple[str, DictConfig]], checkpoint_step: int | None) -> list[Logger]:
    loggers = []
    for name, spec in specs:
        try:
            cls = get_class(spec._target_)
        except Exception as error:  # noqa: BLE001  Hydra's own first line names the missing module or class
            raise ConfigError(f"{name}: {str(error).strip().splitlines()[0]}") from None
        for base, extra_name in EXTRA_OF.items():
            if issubclass(cls, base):
                require_logger_extra(name, extra_name)
        extra: dict[str, Any] = {}
        if issubclass(cls, ContinuesAfterResume):
            extra["checkpoint_step"] = checkpoint_step
        if issubclass(cls, TensorBoardLogger):
            # TensorBoard hides an earlier attempt's events from this step on (SummaryWriter's purge_step).
            extra["purge_step"] = 0 if checkpoint_step is None else checkpoint_step + 1
        loggers.append(instantiate(spec, **extra))
    return loggers


class ResumableCSVLogger(ContinuesAfterResume, CSVLogger):
    """Lightning's CSVLogger, whose metrics.csv a resumed attempt continues (Lightning's would
    delete it): the rows up to the step of the checkpoint it resumes from are kept."""

    def __init__(
        self, save_dir: str, name: str = "csv", version: str = "", checkpoint_step: int | None = None, **kwargs: Any
    ) -> None:
        self._kept: list[dict[str, str]] = []
        path = Path(save_dir, name, version, "metrics.csv")
        if path.is_file() and checkpoint_step is not None:
            with open(path, newline="") as handle:
                self._kept = [row for row in csv.DictReader(handle) if _kept_step(row, checkpoint_step)]
        super().__init__(save_dir, name=name, version=version, **kwargs)

    @property
    def experiment(self) -> Any:
        created = self._experiment is None
        writer = super().experiment
        if created and self._kept:
            writer.metrics, self._kept = self._kept, []  # written back on the first save
        return writer


def _kept_step(row: dict[str, str], checkpoint_step: int) -> bool:
    """A row of a step up to the checkpoint's; a row cut short by a kill is dropped."""
    try:
        return int(row["step"]) <= checkpoint_step
    except (KeyError, TypeError, ValueError):
        return False


def saved_run_ids(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return read_json(Path(run_dir) / LOGGER_RUNS_FILE) or {}


def save_run_id(run_dir: str | os.PathLike[str], logger: str, value: Any) -> None:
    ids = saved_run_ids(run_dir)
    ids[logger] = value
    write_json_atomic(Path(run_dir) / LOGGER_RUNS_FILE, ids)


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}")).hostname or WANDB_HOST
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class ResumableWandbLogger(WandbLogger):
    """Lightning's WandbLogger with a run id kept in the run directory, so every attempt of the run
    continues the same W&B run (`resume="allow"`); offline unless an API key is configured."""

    def __init__(
        self,
        save_dir: str,
        name: str | None = None,
        project: str = "deconcnn",
        group: str | None = None,
        offline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            save_dir: the run directory: W&B's files go in `<save_dir>/wandb`, the id in loggers.json.
            name: the run's name in W&B (the run id; default the run directory's name).
            project: the W&B project.
            group: W&B's run group (the sweep's name).
            offline: None: offline unless WANDB_MODE says otherwise or an API key is configured
                (`wandb sync <save_dir>/wandb/offline-run-*` uploads such a run later).
        """
        run_id = saved_run_ids(save_dir).get("wandb")
        if run_id is None:
            run_id = uuid.uuid4().hex[:12]  # W&B ids: unique in the project, letters and digits
            save_run_id(save_dir, "wandb", run_id)
        if offline is None:
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") if mode else not wandb_key_configured()
        super().__init__(
            name=name or Path(save_dir).name,
            save_dir=save_dir,
            id=run_id,
            project=project,
            group=group,
            offline=offline,
            resume="allow",
            **kwargs,
        )


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the run id kept in the run directory, so every attempt of the
    run logs to the same MLflow run. The default store is a local file store in the run directory."""

    def __init__(
        self,
        run_dir: str,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            run_dir: the run directory: the default store is `<run_dir>/mlruns`, the id goes in loggers.json.
            experiment_name: the MLflow experiment (the sweep's name; default "deconcnn").
            run_name: the MLflow run's name (the run id; default the run directory's name).
            tracking_uri: a store or server; default $MLFLOW_TRACKING_URI, else the local file store.
        """
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"file:{Path(run_dir) / 'mlruns'}"
        if tracking_uri.startswith("file:"):
            # MLflow 3 refuses its file store unless told; a run directory has no database server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        saved = saved_run_ids(run_dir).get("mlflow") or {}
        run_id = saved.get("run_id") if saved.get("tracking_uri") == tracking_uri else None
        super().__init__(
            experiment_name=experiment_name or "deconcnn",
            run_name=run_name or Path(run_dir).name,
            tracking_uri=tracking_uri,
            run_id=run_id,
            **kwargs,
        )
        self._continued = run_id is not None
        if run_id is None:  # creates the run now, to save its id before anything is logged to it
            save_run_id(run_dir, "mlflow", {"tracking_uri": tracking_uri, "run_id": self.run_id})

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        # MLflow refuses to change a logged param: a run resumed with other settings (a longer
        # max_epochs, say) keeps its first attempt's values and adds only new keys.
        if self._continued:
            logged = self.experiment.get_run(self.run_id).data.params
            params = {k: v for k, v in _flatten_dict(_convert_params(params)).items() if k not in logged}
        super().log_hyperparams(params)
