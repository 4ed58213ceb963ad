"""Validations a relaunch reuses: which run configs passed, under which code, configs and Python.

A launch validates every run it submits: Hydra composes its config, check_config reads it, and
every `_target_` is imported (torch, Lightning, a user's modules: seconds) and given only
arguments it takes. The outcome depends on the run's overrides and on nothing else but the
environment: the package's code and configs (code_version), the config directories the runs name
(--config-dir), and the Python that imports the targets. So a launch records, in the sweep
directory, the runs that passed (by a hash of their overrides), each one's data source (for the
notes), the launcher settings Hydra composed for the sweep (by a hash of the backend, the base
overrides and the launcher overrides: they too depend on nothing else but the environment) and
that environment: the interpreter, sys.path and what each of its directories holds (an install or
uninstall adds or renames an entry), and the file, size and mtime of every module the validating
process had loaded (an edited module, a reinstalled package). A relaunch in the same environment
takes those runs as validated and those settings as composed, without importing or composing
anything; any difference and the runs are validated and the settings composed again. Environment
variables a config reads (`oc.env`) are not part of it: they are the run's, read again where it
runs (the launcher settings are kept unresolved, as composed).

Written best-effort by the launch that validated; read forgivingly (a corrupt file is ignored).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from deconcnn.runconfig import import_like_a_run
from deconcnn.runlog.atomic import write_text_atomic
from deconcnn.runlog.layout import VALIDATED_FILE
from deconcnn.sweep.sweepdir import code_version

VERSION = 1
CONFIG_DIR_URL = re.compile(r"file://([^',\]]+)")


def overrides_key(overrides: Sequence[str]) -> str:
    """A run's identity for its validation: its overrides, in order."""
    return hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:24]


def launcher_key(kind: str, base: Sequence[str], launcher_overrides: Sequence[str]) -> str:
    """What a backend's launcher settings are composed from (Backend.settings), besides the environment."""
    return overrides_key([kind, *base, "", *launcher_overrides])


def _config_dirs_digest(override_lines: Iterable[str]) -> str:
    """The contents of every config directory the runs put on Hydra's search path."""
    digest = hashlib.sha256()
    for directory in sorted({d for line in override_lines for d in CONFIG_DIR_URL.findall(line)}):
        root = Path(directory)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _path_listing() -> list[list[Any]]:
    """What each sys.path directory holds that an import may find: its packages and modules by name,
    and the mtime of its .pth files (a package installed, upgraded (a new dist-info name), removed,
    or shadowed by a new module beside the launch). Other files (logs, results) and the
    __pycache__ that any import beside the launch may create do not count."""
    importable = (*importlib.machinery.all_suffixes(), ".pth", ".egg-link")
    listing = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as items:
                names = sorted(
                    (i.name, i.stat().st_mtime_ns if i.name.endswith(".pth") else 0)
                    for i in items
                    if i.name.endswith(importable) or (i.is_dir() and i.name != "__pycache__")
                )
        except OSError:
            names = []
        listing.append([entry, names])
    return listing


def _loaded_modules() -> list[list[Any]]:
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    out = []
    for path in sorted(f for f in files if isinstance(f, str)):
        with suppress(OSError):
            st = os.stat(path)
            out.append([path, st.st_size, st.st_mtime_ns])
    return out


def _modules_unchanged(modules: Any) -> bool:
    if not isinstance(modules, list):
        return False
    try:
        for path, size, mtime in modules:
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return False
    except (OSError, TypeError, ValueError):
        return False
    return True


def environment(override_lines: Iterable[str]) -> str:
    """A digest of what a validation depends on besides the overrides (module doc), as a run sees it."""
    import_like_a_run()
    parts = [sys.version, sys.executable, code_version(), _config_dirs_digest(override_lines), _path_listing()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class Validations:
    """The validations recorded in a sweep directory that hold in this process's environment, and
    those a launch adds."""

    def __init__(self, sweep_dir: str | Path, config_lines: Iterable[str]) -> None:
        self.path = Path(sweep_dir) / VALIDATED_FILE
        self.config_lines = list(config_lines)
        self.sources: dict[str, str] = {}  # overrides_key of a run that passed -> its data source
        self.named: dict[str, str] = {}  # overrides_key of a run's base -> the data it names
        self.launchers: dict[str, dict[str, Any]] = {}  # launcher_key -> the settings composed for it
        self.added = False
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            return
        if (
            isinstance(data, dict)
            and data.get("version") == VERSION
            and isinstance(data.get("sources"), dict)
            and isinstance(data.get("named"), dict)
            and data.get("environment") == environment(self.config_lines)
            and _modules_unchanged(data.get("modules"))
        ):
            self.sources = {k: v for k, v in data["sources"].items() if isinstance(v, str)}
            self.named = {k: v for k, v in data["named"].items() if isinstance(v, str)}
            launchers = data.get("launchers")  # absent from a record written before it was kept
            if isinstance(launchers, dict):
                self.launchers = {k: v for k, v in launchers.items() if isinstance(v, dict)}

    def add_sources(self, passed: Iterable[tuple[str, str]]) -> None:
        """(overrides_key, data source) of runs that passed, checked with every target imported."""
        before = len(self.sources)
        self.sources.update(passed)
        self.added |= len(self.sources) > before

    def add_named(self, key: str, data: str) -> None:
        self.named[key] = data
        self.added = True

    def add_launcher(self, key: str, settings: dict[str, Any]) -> None:
        """Settings that passed the backend's checks, kept only where JSON gives them back as they are."""
        if json.loads(json.dumps(settings)) == settings:
            self.launchers[key] = settings
            self.added = True

    def save(self) -> None:
        """Write the file with this process's environment, as it is now that the targets are
        imported (best-effort: it only spares work)."""
        document = {
            "version": VERSION,
            "environment": environment(self.config_lines),
            "modules": _loaded_modules(),
            "sources": self.sources,
            "named": self.named,
            "launchers": self.launchers,
        }
        with suppress(OSError):
            write_text_atomic(self.path, json.dumps(document), fsync=False)
