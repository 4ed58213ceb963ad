"""Processes on this machine, by pid and start time: a pid alone is recycled, the pair is not."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil

from deconcnn.runlog.records import ProcessRecord

HOST = socket.gethostname()
START_SLACK_S = 2.0  # the kernel's boot time, which start times count from, has whole seconds


def torch_threads(cpus: int, concurrent: int) -> int:
    """Threads for each of `concurrent` training processes sharing `cpus` cores: their share, but
    never more than an OMP_NUM_THREADS the user set (torchrun leaves a set one alone too). More
    threads than free cores make OpenMP's workers spin: a 4-step run given two threads beside a
    busy core took 110 CPU-s instead of 16."""
    share = max(1, cpus // max(1, concurrent))
    chosen = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(share, int(chosen)) if chosen.isdigit() and int(chosen) > 0 else share


def start_time(pid: int) -> float | None:
    """When a live process started (epoch seconds), None when there is no such live process (a
    zombie, dead but not yet reaped, is none); 0.0 when it lives but its start cannot be read."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:  # ZombieProcess too
        return None
    except psutil.AccessDenied:
        return 0.0


def identity(pid: int | None = None) -> ProcessRecord:
    """What identifies a process for `alive`: host, pid and start time."""
    pid = os.getpid() if pid is None else pid
    return ProcessRecord(HOST, pid, start_time(pid))


def alive(ident: ProcessRecord | None) -> bool | None:
    """True/False for a process of this host; None when it ran elsewhere (undecidable here)."""
    if not ident or not isinstance(ident.pid, int) or ident.host != HOST:
        return None
    started = start_time(ident.pid)
    if started is None:
        return False
    recorded = ident.pid_start
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
