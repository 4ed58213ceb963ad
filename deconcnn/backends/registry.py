"""Which backends exist: the entry points of the group `deconcnn.backends` (each names a Backend
subclass by its kind, as submitit finds its executor plugins), and any registered at run time.

    [project.entry-points."deconcnn.backends"]
    mycluster = "mypackage.backend:MyClusterBackend"

`resolve("auto")` picks the available backend with the highest `auto_priority`; a kind asked by
name must be available here. `attach(handle)` gives a backend that can poll and cancel a handle
saved in a manifest by another process.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points

from deconcnn.backends.base import AUTO, Backend, BackendError, Handle

ENTRY_POINT_GROUP = "deconcnn.backends"
_registered: dict[str, type[Backend]] = {}
_loaded: dict[str, type[Backend]] = {}


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def register(cls: type[Backend]) -> type[Backend]:
    """Add a backend besides the installed ones (a test's, a notebook's); returns it (a decorator)."""
    _registered[cls.kind] = cls
    return cls


def unregister(kind: str) -> None:
    _registered.pop(kind, None)


def kinds() -> tuple[str, ...]:
    """The kinds of every backend, installed ones first; nothing is imported to say so."""
    return tuple(dict.fromkeys([*_entry_points(), *_registered]))


def backend_class(kind: str) -> type[Backend]:
    """The backend of this kind (imported on first use); BackendError naming the installed ones
    when there is none."""
    if kind in _registered:
        return _registered[kind]
    if kind not in _loaded:
        point = _entry_points().get(kind)
        if point is None:
            raise BackendError(
                f"no backend {kind!r} is installed here (installed: {', '.join(kinds()) or 'none: reinstall deconcnn'})"
            )
        cls = point.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)) or cls.kind != kind:
            raise BackendError(f"entry point {kind} = {point.value} is not a Backend of kind {kind!r}")
        _loaded[kind] = cls
    return _loaded[kind]


def backends() -> dict[str, type[Backend]]:
    """Every backend by kind, installed ones first (each imported)."""
    return {kind: backend_class(kind) for kind in kinds()}


def resolve(requested: str, *, require_available: bool = True) -> type[Backend]:
    """`auto`: the available backend of highest auto_priority; a kind: that backend, which must be
    available here unless `require_available` is False (a dry run plans for a cluster elsewhere)."""
    if not kinds():  # an install from before the entry points existed (an editable one not redone)
        raise BackendError(
            f"no backend is installed: reinstall deconcnn (`pip install -e .`) to register {ENTRY_POINT_GROUP}"
        )
    if requested == AUTO:
        usable = [cls for cls in backends().values() if cls.auto_priority is not None and cls.unavailable() is None]
        if not usable:
            raise BackendError("no backend is available here")
        return max(usable, key=lambda cls: cls.auto_priority or 0)
    if requested not in backends():
        *first, last = (AUTO, *kinds())
        raise BackendError(f"--executor must be {', '.join(first)} or {last}, got {requested!r}")
    cls = backend_class(requested)
    why = cls.unavailable() if require_available else None
    if why:
        raise BackendError(f"--executor {requested}: {why}")
    return cls


def attach(handle: Handle) -> Backend:
    """A backend that can poll and cancel `handle`, submitted by any process (module doc)."""
    return backend_class(handle.kind).attach(handle)
