"""Processes on this machine, by pid and start time: a pid alone is recycled, the pair is not.

No psutil: /proc has all of it (Linux, where the clusters are). Where /proc is missing a live pid
reads as started at 0 (alive, start unknown).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

HOST = socket.gethostname()
START_SLACK_S = 2.0  # /proc's boot time has whole seconds


def start_time(pid: int) -> float | None:
    """When a live process started (epoch seconds), None when there is no such live process."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by whatever started it
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks


def identity(pid: int | None = None) -> dict[str, Any]:
    """What identifies a process for `alive`: host, pid and start time."""
    pid = os.getpid() if pid is None else pid
    return {"host": HOST, "pid": pid, "pid_start": start_time(pid)}


def alive(ident: dict[str, Any] | None) -> bool | None:
    """True/False for a process of this host; None when it ran elsewhere (undecidable here)."""
    if not ident or not isinstance(ident.get("pid"), int) or ident.get("host") != HOST:
        return None
    started = start_time(ident["pid"])
    if started is None:
        return False
    recorded = ident.get("pid_start")
    return recorded is None or started == 0.0 or abs(started - float(recorded)) <= START_SLACK_S


def stop_group(pid: int, grace_s: float) -> None:
    """SIGTERM to the process group led by pid, SIGKILL after `grace_s` if it is still there."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
