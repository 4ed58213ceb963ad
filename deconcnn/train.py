"""deconcnn-train: the Hydra app for one instrumented run (the run itself: deconcnn.training.run).

Torch and Lightning load only once Hydra has composed the config and check_config has read it: a
typo in an override, an unknown experiment, a value out of range (`optim.lr=-0.1`) or `--cfg job`
is answered in about a second, not after ~5 CPU-s of imports.
Everything a run writes is in its directory (`hydra.run.dir`): the metric log, run.json,
checkpoints, `.hydra/` and `stdout.log`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deconcnn.runconfig import CONF_DIR, ConfigError, check_config, import_like_a_run
from deconcnn.runlog.run_status import RUN_LOG, SUBMISSION_ENV
from deconcnn.runlog.rundir import RunFilesLost

# Lightning's hints that do not apply to a run this tool starts (worded as in Lightning 2.6); its
# other warnings still reach stdout.log.
LIGHTNING_HINTS = (
    "The `srun` command is available",
    "is smaller than the logging interval",
    "isinstance(treespec, LeafSpec)",
    "exists and is not empty",
    "Tip: For seamless cloud",
)


class _DropHints(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(hint in record.getMessage() for hint in LIGHTNING_HINTS)


def quiet_lightning_hints() -> None:
    for hint in LIGHTNING_HINTS:
        warnings.filterwarnings("ignore", message=f".*{re.escape(hint)}")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropHints())


class _Tee:
    """Writes to the terminal and to the run's stdout.log (a run started by hand has no runner that
    redirects its output)."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self.stream, self.log = stream, log
        self.log_failed = False

    def write(self, text: str) -> int:
        if not self.log_failed:
            try:
                self.log.write(text)
                self.log.flush()
            except OSError:  # a full disk: the terminal still gets every line
                self.log_failed = True
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def output_in(run_dir: Path) -> Iterator[None]:
    if os.environ.get(SUBMISSION_ENV):  # the sweep's pack runner already writes stdout.log
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RUN_LOG, "a", encoding="utf-8") as log:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def refuse(message: object) -> NoReturn:
    """A bad input's one line, exit status 2."""
    print(f"deconcnn-train: error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Any:
    output_dir = HydraConfig.get().runtime.output_dir
    if Path(cfg.run_dir).resolve() != Path(output_dir).resolve():
        refuse(
            f"run_dir={cfg.run_dir} would split the run's files from Hydra's ({output_dir}): "
            f"set hydra.run.dir={cfg.run_dir} instead"
        )
    try:
        check_config(cfg)  # build_run checks it again; here, a bad value is refused before torch loads
    except ConfigError as error:
        refuse(error)
    # Here, not at the top: Hydra refuses a bad override before the training stack loads.
    from deconcnn.training.data import DataNotFoundError
    from deconcnn.training.run import train

    quiet_lightning_hints()
    with output_in(Path(cfg.run_dir)):
        try:
            return train(cfg)
        except (ConfigError, DataNotFoundError) as error:
            refuse(error)
        except RunFilesLost as error:
            print(f"deconcnn-train: failed: {error}", file=sys.stderr)
            sys.exit(1)


def main() -> None:
    import_like_a_run()  # `deconcnn-train` imports a user's modules as `python -m deconcnn.train` does
    _hydra_main()


if __name__ == "__main__":
    main()
