"""Runs on a CPU forked from a server that has imported the training stack once.

Importing torch and Lightning is ~5 CPU-s of every `python -m deconcnn.train`: a fifth of a demo
run, half of a `check` run. multiprocessing's forkserver, with the stack preloaded, pays it once per
pack runner. Each run is then a fork of that server, set up as a fresh `python -m <module> <args>`
would be: its own session, stdout and stderr appended unbuffered to its log, the command's
environment, the interpreter's sys.path with the cwd and PYTHONPATH in front, and the thread count
MKL_NUM_THREADS or OMP_NUM_THREADS asks for (torch read them when the server loaded it). It exits as the
interpreter does: non-daemon threads joined, atexit handlers run, the same exit code.

The resource probe's throughput workers start the same way, so that on a CPU the probe measures runs
as the sweep will start them. Runs on a GPU keep a fresh interpreter: beside hours of training the
import is noise, and CUDA reads its device list (CUDA_VISIBLE_DEVICES, which differs per slot) once
per process. What stays shared with the server: the modules it preloaded (a module of the same name
in the launch directory does not shadow them) and the hash seed.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import setproctitle

from deconcnn.backends.pack import THROUGHPUT_MODULE, TRAIN_MODULE, Command

PRELOAD = ["deconcnn.training.run"]  # what TRAIN_MODULE imports: torch, Lightning, model, data, callbacks
FORKED_MODULES = (TRAIN_MODULE, THROUGHPUT_MODULE)  # both build and train a run (THROUGHPUT_MODULE: timed)
GPU_ENV = "CUDA_VISIBLE_DEVICES"
SWITCH_ENV = "DECONCNN_FORK_RUNS"  # "0": every run in a fresh interpreter, as on a GPU

_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(PRELOAD)


_server_failed: list[str] = []  # why the server could not start, once it could not


def start_process(command: Command, env: dict[str, str], log: Path) -> subprocess.Popen[bytes] | ForkedRun:
    """The command in a session of its own, its stdout and stderr appended to `log`: forked from the
    server where `wanted`, else (or when the server cannot start) a fresh interpreter."""
    if wanted(command, env):
        forked = start(command, env, log)
        if forked is not None:
            return forked
    with open(log, "ab") as out:
        return subprocess.Popen(command.argv(), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wanted(command: Command, env: dict[str, str]) -> bool:
    """Fork a run (or a probe worker) that sees no GPU; start a fresh interpreter for one that may,
    and for any other command (the probe's measuring process imports no torch)."""
    return (
        command.module in FORKED_MODULES
        and not env.get(GPU_ENV, "").strip()
        and env.get(SWITCH_ENV, "1") != "0"
        and sys.platform == "linux"
        and not _server_failed
    )


def start(command: Command, env: dict[str, str], log: Path) -> ForkedRun | None:
    """The run forked from the server; None when the server cannot start (its preload raised: the
    traceback is on this process's stderr), after which every run of this process starts fresh
    and meets the error itself, in its own log."""
    log.touch()  # there once this returns, as Popen's log is; a log that cannot be made fails here
    try:
        return ForkedRun(command, env, log)
    except (EOFError, OSError) as error:
        _server_failed.append(f"{type(error).__name__}: {error}")
        print(
            f"deconcnn: the preloaded server did not start ({_server_failed[0]}): runs start in fresh interpreters",
            file=sys.stderr,
            flush=True,
        )
        return None


@functools.cache
def interpreter_path() -> tuple[str, ...]:
    """sys.path of a fresh interpreter, before its script's directory and PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return tuple(json.loads(out.stdout))


class ForkedRun:
    """The part of subprocess.Popen that the pack runner and the probe use, for a run forked from
    the server."""

    def __init__(self, command: Command, env: dict[str, str], log: Path) -> None:
        args = (command.argv(), env, str(log), [os.getcwd(), *interpreter_path()])
        self._process = _FORKSERVER.Process(target=_run_module, args=args, name=command.name)
        self._process.start()
        self.pid: int = self._process.pid  # type: ignore[assignment]  # set by start()

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, as Popen.wait: TimeoutExpired when it still runs after `timeout` seconds."""
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0)
        return self._process.exitcode


def _run_module(argv: list[str], env: dict[str, str], log: str, base_path: list[str]) -> None:
    """In the forked child: be `argv` (`python -m module *args`) with `env`, writing to `log`; never
    returns."""
    _, _, module, *args = argv
    os.setsid()
    setproctitle.setproctitle(" ".join(argv))  # what ps shows for it, as for a fresh process
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [base_path[0], *pythonpath, *base_path[1:]]
    torch = sys.modules.get("torch")  # preloaded: its thread pool read the server's environment
    threads = threads_asked(env)
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = _exit_code(exit_)
    except KeyboardInterrupt:  # as the interpreter: the traceback, then killed by SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as the interpreter: the traceback, then exit 1
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the interpreter's exit runs them; os._exit (multiprocessing's) does not
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def threads_asked(env: dict[str, str]) -> int | None:
    """The intra-op threads a fresh torch takes from `env`: MKL_NUM_THREADS, else OMP_NUM_THREADS
    (ATen's intraop_default_num_threads); None when neither is a positive integer."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _exit_code(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code & 0xFF
    print(exit_.code, file=sys.stderr)
    return 1
