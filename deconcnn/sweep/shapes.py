"""Checking 50,000 run configs without composing, copying and resolving 50,000 configs.

The runs of a sweep repeat a few shapes: the same config-group choices and fixed overrides, and
a handful of plain `key=value` settings (the axes) whose values differ. The first run of a shape
is checked in full; every later run of it differs from that one only in those values, and each
distinct setting of the shape (`seed=17`) is checked once, by putting that one value into the
checked config and checking it again (no copy, no composition).

This is exact for a setting whose value nothing else reads but its own node and nodes that are
plain aliases of it (`data.seed: ${seed}`): then the override's application, every interpolation
and every rule of check_config (each reads one key) meets at most one setting's value, so a run
passes exactly when its shape's first run and each of its settings pass. A setting that another
interpolation may read (it names the key or a parent of it, or calls a resolver that is not one of
OmegaConf's own), or that sits under a `_target_` key, is not shared: such a run is checked in full.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf

from deconcnn.runconfig import check_config

WORD = re.compile(r"\w+")
RESOLVER = re.compile(r"\$\{\s*([\w.\-]+)\s*:")
#: Resolvers that read only what their arguments name (the names the word test below sees).
PURE_RESOLVERS = frozenset({"oc.env", "oc.select", "oc.decode", "oc.create", "oc.deprecated", "oc.dict.keys"})
PURE_RESOLVERS |= {"oc.dict.values", "hydra"}
TARGET_KEY = "_target_"
MISSING = "???"


def _plain_value(override: Override) -> bool:
    """`key=value` of a number, a bool or a string that is no interpolation and not MISSING."""
    if override.type is not OverrideType.CHANGE or override.package is not None or override.is_sweep_override():
        return False
    value = override.value()
    if isinstance(value, str):
        return "${" not in value and value != MISSING
    return type(value) in (int, float, bool)


class Settings:
    """Which of a run's value overrides are settings a shape may share (module doc), cached per
    line and per key list: 50,000 runs repeat a few hundred lines."""

    def __init__(self) -> None:
        self.plain: dict[str, bool] = {}
        self.apart: dict[tuple[str, ...], frozenset[str]] = {}

    def __call__(self, overrides: Sequence[Override]) -> dict[str, Override]:
        keys = tuple(o.key_or_group for o in overrides)
        if keys not in self.apart:  # keys set once, neither inside nor around another one
            self.apart[keys] = frozenset(
                k
                for k in keys
                if keys.count(k) == 1 and not any(o.startswith(f"{k}.") or k.startswith(f"{o}.") for o in keys)
            )
        apart = self.apart[keys]
        out = {}
        for override in overrides:
            line = override.input_line or ""
            if line not in self.plain:
                self.plain[line] = _plain_value(override)
            if self.plain[line] and override.key_or_group in apart:
                out[override.key_or_group] = override
        return out


def _interpolations(cfg: DictConfig) -> tuple[list[tuple[str, str]], set[str]]:
    """(path, text) of every interpolation in `cfg` (unresolved), and the paths of its value leaves."""
    found: list[tuple[str, str]] = []
    leaves: set[str] = set()
    stack: list[tuple[str, Any]] = [("", cfg)]
    while stack:
        path, node = stack.pop()
        if node._is_interpolation():
            found.append((path, str(node._value())))
        elif isinstance(node, DictConfig):
            if not (node._is_none() or node._is_missing()):
                stack.extend((f"{path}.{k!s}" if path else str(k), node._get_node(k)) for k in node)
        elif isinstance(node, ListConfig):
            if not (node._is_none() or node._is_missing()):
                stack.extend((f"{path}[{i}]", node._get_node(i)) for i in range(len(node)))
        else:
            leaves.add(path)
    return found, leaves


def _holders(key: str, interpolations: list[tuple[str, str]], leaves: set[str]) -> tuple[str, ...] | None:
    """The paths whose value is the setting's value (the key, its aliases and theirs), or None when
    anything else may read it or it may shape what is instantiated (module doc)."""
    if key not in leaves or TARGET_KEY in key.split("."):
        return None
    held = [key]
    grown = True
    while grown:
        aliases = {"${" + path + "}" for path in held}
        new = [path for path, text in interpolations if path not in held and text in aliases]
        if any(TARGET_KEY in WORD.findall(path) for path in new):
            return None
        held += new
        grown = bool(new)
    names = {word for path in held for word in WORD.findall(path)}
    if any(path not in held and names & set(WORD.findall(text)) for path, text in interpolations):
        return None
    return tuple(held)


class Shape:
    """The first checked run of a shape: its config (overrides applied, unresolved) and what
    each of its settings' other values was found to do."""

    def __init__(self, cfg: DictConfig, source: str, settings: dict[str, Override]) -> None:
        self.cfg, self.source, self.settings = cfg, source, settings
        interpolations, leaves = _interpolations(cfg)
        pure = all(
            name in PURE_RESOLVERS for _, text in interpolations for name in RESOLVER.findall(text)
        )  # a user's resolver may read any key
        self.holders = {k: _holders(k, interpolations, leaves) if pure else None for k in settings}
        self.passed = {o.input_line for o in settings.values()}

    def passes(self, settings: dict[str, Override]) -> bool:
        """Whether a run of this shape with these settings passes the check; False also when it
        cannot be told here (a setting that is not shared): the caller checks it in full."""
        for key, override in settings.items():
            if override.input_line in self.passed:
                continue
            if self.holders.get(key) is None or not self._passes(key, override):
                return False
            self.passed.add(override.input_line)
        return True

    def _passes(self, key: str, override: Override) -> bool:
        """The shape's config with this one setting changed passes check_config; put back after."""
        holders = self.holders[key]
        assert holders is not None
        try:
            ConfigLoaderImpl._apply_overrides_to_config([override], self.cfg)
            for path in holders:
                OmegaConf.select(self.cfg, path)  # resolves its aliases
            check_config(self.cfg)
            return True
        except Exception:  # noqa: BLE001  the caller checks the run in full, and says why
            return False
        finally:
            ConfigLoaderImpl._apply_overrides_to_config([self.settings[key]], self.cfg)
