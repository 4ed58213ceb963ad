"""Backends: where packs of runs execute (deconcnn.backends.base), found by kind through the
registry (deconcnn.backends.registry). No other part of deconcnn names a backend's kind."""

from deconcnn.backends.base import (
    AUTO,
    POLL_S,
    STOP_GRACE_S,
    Backend,
    BackendError,
    Handle,
    SchedulerState,
    is_launcher_override,
    wait,
)
from deconcnn.backends.pack import Command, Pack, Submission

__all__ = [
    "AUTO",
    "POLL_S",
    "STOP_GRACE_S",
    "Backend",
    "BackendError",
    "Command",
    "Handle",
    "Pack",
    "SchedulerState",
    "Submission",
    "is_launcher_override",
    "wait",
]
