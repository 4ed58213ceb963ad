"""A run's Hydra config: where it lives, how it composes, what makes it valid. No torch import, so
the sweep layer can validate 216 configs without loading the training stack."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "train"


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
    return f"{line} ({hint[0].lower()}{hint[1:]})" if hint else line


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
    rules = [
        ("optim.lr", lambda v: v > 0, "> 0"),
        ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
        ("model.width", lambda v: v > 0, "> 0"),
        ("data.batch_size", lambda v: v >= 1 and v == int(v), "an integer >= 1"),
        ("trainer.max_epochs", lambda v: v >= 1 and v == int(v), "an integer >= 1"),
        ("schedule.warmup_epochs", lambda v: v >= 0, ">= 0"),
        ("seed", lambda v: v == int(v), "an integer"),
    ]
    for key, ok, expected in rules:
        value = _number(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {value:g}")
    for key in cfg.get("logger") or {}:  # before any run starts: a sweep of 216 runs fails at launch
        if key in LOGGER_EXTRAS:
            require_logger_extra(f"logger.{key}", str(key))
    if cfg.model.norm not in ("batchnorm", "none"):
        raise ConfigError(f"model.norm must be batchnorm or none, got {cfg.model.norm!r}")
    if cfg.trainer.get("gradient_clip_val") is not None and _number(cfg, "trainer.gradient_clip_val") <= 0:
        raise ConfigError(f"trainer.gradient_clip_val must be > 0 or null, got {cfg.trainer.gradient_clip_val}")


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
