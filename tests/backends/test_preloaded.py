"""A run forked from the preloaded server (deconcnn.backends.preloaded) is what `python -m` would
have started: each case runs tests/support/forked_child.py both ways and compares."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from runs import SUPPORT

from deconcnn.backends import Command, preloaded
from deconcnn.backends.pack import THROUGHPUT_MODULE, TRAIN_MODULE
from sweeps import wait_for

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
ENV = {
    **{k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES},
    "PYTHONPATH": str(SUPPORT),
    "FORKED_CHILD_MARK": "marked",
    "OMP_NUM_THREADS": "2",
}


def forked(tmp_path: Path, *args: str, env: dict[str, str] = ENV) -> tuple[preloaded.ForkedRun, Path]:
    log = tmp_path / "forked.log"
    run = preloaded.start(Command("child", "forked_child", args, str(tmp_path)), env, log)
    assert run is not None, "the preloaded server did not start"
    return run, log


def fresh(tmp_path: Path, *args: str, env: dict[str, str] = ENV) -> tuple[int, Path]:
    log = tmp_path / "fresh.log"
    with open(log, "ab") as out:
        code = subprocess.run(
            Command("child", "forked_child", args, str(tmp_path)).argv(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            timeout=120,
        ).returncode
    return code, log


def seen(log: Path) -> dict:
    return json.loads(next(line for line in log.read_text().splitlines() if line.startswith("seen "))[5:])


def test_it_sees_the_argv_cwd_path_environment_session_and_threads_of_a_fresh_process(tmp_path):
    run, log = forked(tmp_path, "exit", "0")
    assert run.wait() == 0
    assert fresh(tmp_path, "exit", "0")[0] == 0
    got, want = seen(log), seen(tmp_path / "fresh.log")
    assert got == want
    assert want["threads"] == 2 and want["session_leader"] and want["env"] == "marked"
    assert str(Path(__file__).parent) not in got["path"], "the server's own sys.path leaked into the run"


@pytest.mark.parametrize(
    "threads",
    [{"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}],
)
def test_it_takes_the_torch_threads_its_environment_asks_for_as_a_fresh_process(tmp_path, threads):
    """Cases of 1 and 2 threads: whatever the server took, one of them differs from it."""
    env = {**ENV, **threads}
    run, log = forked(tmp_path, "exit", "0", env=env)
    assert run.wait() == 0 and fresh(tmp_path, "exit", "0", env=env)[0] == 0
    assert seen(log)["threads"] == seen(tmp_path / "fresh.log")["threads"] == preloaded.threads_asked(env)


@pytest.mark.parametrize(
    ("args", "last_line"),
    [
        (("exit", "3"), None),
        (("raise",), "ValueError: raised in the run"),
        (("message",), "a message for stderr"),
    ],
)
def test_it_exits_with_the_code_and_last_words_of_a_fresh_process(tmp_path, args, last_line):
    run, log = forked(tmp_path, *args)
    code = run.wait()
    want_code, want_log = fresh(tmp_path, *args)
    assert code == want_code and code != 0
    assert log.read_text().splitlines()[-1] == want_log.read_text().splitlines()[-1]
    if last_line is not None:
        assert log.read_text().splitlines()[-1] == last_line


def test_it_joins_its_threads_then_runs_atexit_before_it_exits(tmp_path):
    run, log = forked(tmp_path, "atexit")
    assert run.wait() == 0
    assert log.read_text().splitlines()[-2:] == ["thread ended", "atexit ran"]
    fresh(tmp_path, "atexit")
    assert (tmp_path / "fresh.log").read_text().splitlines()[-2:] == ["thread ended", "atexit ran"]


def test_a_sigkilled_run_reads_minus_9_waits_as_popen_its_output_is_unbuffered_and_ps_shows_its_command(tmp_path):
    run, log = forked(tmp_path, "sleep")
    wait_for("its line before the sleep", lambda: "before the sleep" in log.read_text(), timeout=60)
    assert run.poll() is None and run.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):  # as Popen.wait
        run.wait(timeout=0.1)
    cmdline = Path(f"/proc/{run.pid}/cmdline").read_text().replace("\0", " ")
    assert f"{sys.executable} -m forked_child sleep" in cmdline
    os.killpg(run.pid, signal.SIGKILL)  # its own session and group, as start_new_session gives
    assert run.wait(timeout=60) == run.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("module", "env", "forks"),
    [
        (TRAIN_MODULE, {}, True),
        (TRAIN_MODULE, {"CUDA_VISIBLE_DEVICES": ""}, True),  # a local CPU slot
        (TRAIN_MODULE, {"CUDA_VISIBLE_DEVICES": "1"}, False),  # a GPU slot reads its devices itself
        (TRAIN_MODULE, {preloaded.SWITCH_ENV: "0"}, False),
        (THROUGHPUT_MODULE, {}, True),  # the probe's worker: measured as runs start
        (THROUGHPUT_MODULE, {"CUDA_VISIBLE_DEVICES": "0"}, False),
        ("deconcnn.sweep.probe.measure", {}, False),  # imports no torch: nothing to share
    ],
)
def test_only_a_training_run_or_probe_worker_on_a_cpu_is_forked(module, env, forks):
    assert preloaded.wanted(Command("r", module, (), "."), env) is forks


def test_a_server_that_cannot_start_leaves_each_run_to_a_fresh_interpreter(tmp_path):
    """A preload that raises (a torchvision built for another torch breaks `import pytorch_lightning`
    so) kills the server: one line says so, and each run then meets the error in its own log."""
    (tmp_path / "broken_preload.py").write_text('raise RuntimeError("broken at import")\n')
    code = (
        "from pathlib import Path\n"
        "from deconcnn.backends import Command, preloaded\n"
        "from deconcnn.backends.pack import TRAIN_MODULE\n"
        "preloaded._FORKSERVER.set_forkserver_preload(['broken_preload'])\n"
        "child, run = Command('c', 'forked_child', ('exit', '0'), '.'), Command('r', TRAIN_MODULE, (), '.')\n"
        "started = [preloaded.start(child, {}, Path('log')) for _ in range(2) if preloaded.wanted(run, {})]\n"
        "assert started == [None], started\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SUPPORT)])}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeError: broken at import" in result.stderr
    assert result.stderr.count("the preloaded server did not start (EOFError") == 1


def test_a_log_that_cannot_be_made_fails_the_start_as_popen_s_would_and_keeps_the_server(tmp_path):
    run = Command("r", TRAIN_MODULE, (), str(tmp_path))
    with pytest.raises(FileNotFoundError):
        preloaded.start(run, ENV, tmp_path / "gone" / "stdout.log")
    assert preloaded.wanted(run, ENV), "a full disk or a removed directory is not the server failing"
