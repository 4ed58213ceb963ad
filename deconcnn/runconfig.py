"""A run's Hydra config: where it lives, how it composes, what makes it valid. No torch import, so
the sweep layer can validate 216 configs without loading the training stack."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "train"
MAX_SEED = 2**32 - 1
AVAILABLE_OPTIONS = re.compile(r"Available options in '([^']*)':\n((?:\t.*\n?)*)")


class ConfigError(ValueError):
    """A config value that would make the run meaningless."""


#: Loggers of the `logger` group that need a package of their own: the pyproject extra that installs
#: it (named as the logger) -> the modules, any one of which will do.
LOGGER_EXTRAS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}


def require_logger_extra(name: str, extra: str) -> None:
    """One line naming the extra when the package a logger needs is not installed."""
    modules = LOGGER_EXTRAS[extra]
    if not any(importlib.util.find_spec(module) for module in modules):
        raise ConfigError(f"{name} needs the {modules[0]} package: pip install 'deconcnn[{extra}]'")


def config_error_text(error: BaseException) -> str:
    """One line for a Hydra/OmegaConf error: its first line and its cause's ("Could not override
    'hydra.launcher.partiton': Key 'partiton' not in 'SlurmQueueConf'"); Hydra's own first line alone
    often does not say what is wrong."""

    def first(e: BaseException) -> str:
        text = str(e).strip()
        return text.splitlines()[0].strip() if text else type(e).__name__

    line = first(error)
    cause = error.__cause__
    if cause is not None and first(cause) not in line:
        line = f"{line.rstrip('.')}: {first(cause)}"
    # Hydra's own fix for a key that is not in the config, on its second line: kept.
    hint = next((h.strip() for h in str(error).splitlines()[1:] if h.strip().startswith("To append")), None)
    line = f"{line} ({hint[0].lower()}{hint[1:]})" if hint else line
    return line + _available_options(str(error))


def _available_options(text: str) -> str:
    """Hydra's list of a group's options after "Could not find 'model/mynet'", as one clause."""
    match = AVAILABLE_OPTIONS.search(text)
    if not match:
        return ""
    return f" (available options in '{match.group(1)}': {', '.join(match.group(2).split())})"


def compose_run_config(
    overrides: Sequence[str], *, hydra_config: bool = False, config_dir: Path = CONF_DIR
) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=hydra_config)


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def check_config(cfg: DictConfig) -> None:
    """Reject values the libraries would accept silently or fail on late."""
    # (key, rule, what it must be, required): the model's and the data's keys are checked where they
    # have them (the ResNet's width, CifarDataModule's batch size); a user's model or datamodule
    # may have neither, and a variant that sets one its target does not take fails check_target.
    # Every value must also be finite: inf passes `> 0` and nan fails every test silently.
    rules = [
        ("optim.lr", lambda v: v > 0, "> 0", True),
        ("optim.weight_decay", lambda v: v >= 0, ">= 0", True),
        ("model.width", lambda v: v > 0, "> 0", False),
        ("data.batch_size", lambda v: v >= 1 and v == int(v), "an integer >= 1", False),
        ("trainer.max_epochs", lambda v: v >= 1 and v == int(v), "an integer >= 1", True),
        ("schedule.warmup_epochs", lambda v: v >= 0, ">= 0", True),
        # numpy's seeds, which Lightning's seed_everything passes on
        ("seed", lambda v: 0 <= v <= MAX_SEED and v == int(v), f"an integer from 0 to {MAX_SEED}", True),
    ]
    for key, ok, expected, required in rules:
        if not required and OmegaConf.select(cfg, key) is None:
            continue
        value = _number(cfg, key)
        if not (math.isfinite(value) and ok(value)):
            raise ConfigError(f"{key} must be {expected}, got {value:g}")
    for key in cfg.get("logger") or {}:  # before any run starts: a sweep of 216 runs fails at launch
        if key in LOGGER_EXTRAS:
            require_logger_extra(f"logger.{key}", str(key))
    if "norm" in cfg.model and cfg.model.norm not in ("batchnorm", "none"):
        raise ConfigError(f"model.norm must be batchnorm or none, got {cfg.model.norm!r}")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not (math.isfinite(_number(cfg, "trainer.gradient_clip_val")) and clip > 0):
        raise ConfigError(f"trainer.gradient_clip_val must be > 0 or null, got {cfg.trainer.gradient_clip_val}")


def data_target(cfg: DictConfig) -> str:
    """What a run trains on: its data source's `_target_` where the datamodule takes one
    (CifarDataModule: CIFAR-10 or synthetic), else the datamodule's own (a user's)."""
    return str(OmegaConf.select(cfg, "data.source._target_") or OmegaConf.select(cfg, "data._target_"))


#: Keys of an instantiable node that Hydra reads itself, not the target's arguments.
HYDRA_INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def targets(cfg: DictConfig) -> dict[str, tuple[str, frozenset[str]]]:
    """Every node that names a `_target_`, by its key: (the target, the argument names it is given)."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    stack: list[tuple[str, Any]] = [("", cfg)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, DictConfig):
            if "_target_" in node:
                found[where] = (str(node._target_), frozenset(str(k) for k in node) - HYDRA_INSTANTIATE_KEYS)
            stack.extend((f"{where}.{k!s}" if where else str(k), node._get_node(k)) for k in node)
        elif isinstance(node, ListConfig):
            stack.extend((f"{where}[{i}]", node._get_node(i)) for i in range(len(node)))
    return found


def import_like_a_run() -> None:
    """Make this process import a user's modules as a run's process will: a run is `python -m
    deconcnn.train` started in the launch's directory, which puts that directory first on its
    path (a project directory holding `mypkg/` needs no PYTHONPATH); PYTHONPATH is inherited."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


def check_target(key: str, target: str, arguments: frozenset[str]) -> None:
    """Import `target` as `instantiate` would, and refuse arguments its signature does not take:
    one line naming the key, before any run starts."""
    import inspect

    from hydra._internal.utils import _locate

    import_like_a_run()

    try:
        obj = _locate(target)
    except Exception as error:  # noqa: BLE001  an import error in the user's module is one too
        # Hydra's message: "Error loading ...", the cause, then a hint ("Are you sure that module
        # 'mypkg' is installed?"); the cause and the hint say it.
        lines = str(error).strip().splitlines()
        hint = f" ({lines[-1]})" if len(lines) > 2 else ""
        cause = error.__cause__ or error
        raise ConfigError(f"{key}._target_={target}: cannot import it: {config_error_text(cause)}{hint}") from None
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to compare against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    taken = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    unknown = sorted(arguments - taken)
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: {target} takes no argument {unknown[0]!r} "
            f"(it takes: {', '.join(sorted(taken)) or 'none'})"
        )


DEBUG_GROUP = "debug"


def debug_settings(name: str, config_dir: Path = CONF_DIR) -> tuple[set[str], set[str]]:
    """(config keys, config groups) a `debug` config sets, following its defaults within the group."""
    keys: set[str] = set()
    groups: set[str] = set()
    todo = [name]
    while todo:
        path = config_dir / DEBUG_GROUP / f"{todo.pop()}.yaml"
        node = OmegaConf.load(path)
        assert isinstance(node, DictConfig), f"{path}: a debug config is a mapping"
        for entry in node.get("defaults", []):
            if isinstance(entry, str):
                todo.append(entry)
            else:
                groups.update(str(k).removeprefix("override ").lstrip("/") for k in entry)
        body = cast(dict[str, Any], OmegaConf.to_container(node))  # node is a DictConfig: a dict of config keys
        body.pop("defaults", None)
        stack: list[tuple[str, object]] = list(body.items())
        while stack:
            key, value = stack.pop()
            if isinstance(value, dict) and value:
                stack.extend((f"{key}.{k}", v) for k, v in value.items())
            else:
                keys.add(key)
    return keys, groups
