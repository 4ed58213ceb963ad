"""Faults a sweep meets, each ending with every run completed and every train step logged exactly
once after at most one relaunch; between the fault and the relaunch, `status` never shows a run as
pending or running without a process, a live launch or a SLURM job behind it.

Local: SIGKILL of the launcher, Ctrl-C, `cancel` during a launch, `rm -rf` of a run directory.
SLURM (the real local cluster): scancel of a pending and of a running task, slurmctld killed and
restarted, `cancel` of one run of a packed task and then of the rest. (SIGKILL of one packed run and `scontrol requeue`:
test_packing_slurm.py and test_launch_slurm.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from cluster import resume_node

from deconcnn.backends import Handle, processes
from deconcnn.backends.local import launcher_of
from deconcnn.backends.slurm import cli as slurm_cli
from deconcnn.runconfig import CONF_DIR
from deconcnn.sweep.state import read_process
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import PACKED, launch_json, settle, slurm_launch, states_of, status_of, train_steps, wait_for, write_sweep

REPO = CONF_DIR.parent
SUPPORT = REPO / "tests" / "support"
STEPS = 48
# 12 epochs x 4 steps, each at least 0.1 s by default: long enough to be hit mid-training, quick to finish.
FAULT_RUN = [
    "callbacks=default",
    "trainer.val_check_interval=1.0",
    "trainer.max_epochs=12",
    "+callbacks.slow._target_=fault_callbacks.SleepEachStep",
]
SLURM_STATE = Path(os.environ.get("DECONCNN_SLURM_STATE", "/tmp/deconcnn-slurm"))

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fault_callbacks_importable(monkeypatch):
    """Training processes (local or in SLURM jobs, which inherit the environment) find the test callbacks."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))


def sweep(tmp_path: Path, seeds: str = "0,1,2", name: str = "faults", step_seconds: float = 0.1) -> tuple[Path, Path]:
    extra = [*FAULT_RUN, f"+callbacks.slow.seconds={step_seconds}"]
    sweep_file = write_sweep(tmp_path / f"{name}.yaml", seeds=seeds, name=name, extra=extra, monitors=False)
    return sweep_file, tmp_path / "out" / name


def launcher(sweep_file: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    """`deconcnn-sweep launch --executor local` as a user starts it, in its own process group."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deconcnn.cli",
            "launch",
            str(sweep_file),
            "--executor",
            "local",
            "--out",
            str(out),
            "--grace",
            "5",
            *args,
        ],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def training(sweep_dir: Path, run_id: str, steps: int = 8) -> bool:
    return len(train_steps(SweepDir(sweep_dir).run_dir(run_id))) >= steps


def something_behind(sweep_dir: Path, run_id: str) -> bool:
    """A live process of the run, a live local launch or a live SLURM job of its last submission."""
    sd = SweepDir(sweep_dir)
    if processes.alive(read_process(sd.run_dir(run_id))):
        return True
    submission = sd.read_manifest().runs[run_id].last_submission
    handle = submission.handle if submission else None
    if submission and handle and submission.executor == "local":
        return bool(processes.alive(launcher_of(Handle(submission.executor, handle))))
    return bool(handle) and handle in slurm_cli.squeue_states([handle])


def assert_no_phantoms(sweep_dir: Path, capsys) -> dict[str, str]:
    states = states_of(status_of(sweep_dir, capsys))
    phantoms = [r for r, s in states.items() if s in ("pending", "running") and not something_behind(sweep_dir, r)]
    assert not phantoms, (phantoms, states)
    return states


def assert_every_step_once(sweep_dir: Path, capsys) -> None:
    states = states_of(settle(sweep_dir, capsys))
    assert set(states.values()) == {"completed"}, states
    for run_id in states:
        steps = Counter(train_steps(SweepDir(sweep_dir).run_dir(run_id)))
        assert sorted(steps) == list(range(STEPS)) and set(steps.values()) == {1}, run_id


# ---------------------------------------------------------------- local


def test_sigkill_of_the_local_launcher_then_relaunch(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0,1")
    first = launcher(sweep_file, tmp_path / "out", "--parallel", "1")
    wait_for("the first run to train", lambda: training(sweep_dir, "S-core_s0"))
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    states = assert_no_phantoms(sweep_dir, capsys)
    # Its training process outlives it (own session) and is running; the queued run is lost.
    assert states == {"S-core_s0": "running", "S-core_s1": "lost"}, states
    again = launcher(sweep_file, tmp_path / "out", "--parallel", "1")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "1 runs submitted, skipped: 1 running" in out, out
    assert_every_step_once(sweep_dir, capsys)


def test_ctrl_c_of_a_local_launch_then_relaunch(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0,1")
    first = launcher(sweep_file, tmp_path / "out", "--parallel", "2")
    wait_for("both runs to train", lambda: training(sweep_dir, "S-core_s0") and training(sweep_dir, "S-core_s1"))
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 130, out
    assert "SIGINT: 2 runs stopped and recorded as cancelled" in out
    assert assert_no_phantoms(sweep_dir, capsys) == {"S-core_s0": "cancelled", "S-core_s1": "cancelled"}
    for run_id in ("S-core_s0", "S-core_s1"):
        assert not processes.alive(read_process(SweepDir(sweep_dir).run_dir(run_id)))
    assert launch_json(sweep_file, "--executor", "local", "--out", tmp_path / "out", "--parallel", "2") == 0
    assert_every_step_once(sweep_dir, capsys)


def test_sigterm_of_a_local_launch_exits_143(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0")
    first = launcher(sweep_file, tmp_path / "out")
    wait_for("the run to train", lambda: training(sweep_dir, "S-core_s0"))
    first.terminate()
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 143 and "SIGTERM: 1 runs stopped" in out, out
    assert assert_no_phantoms(sweep_dir, capsys) == {"S-core_s0": "cancelled"}


def test_cancel_during_a_local_launch_then_relaunch(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0,1")
    first = launcher(sweep_file, tmp_path / "out", "--parallel", "1")
    wait_for("the first run to train", lambda: training(sweep_dir, "S-core_s0"))
    capsys.readouterr()
    from deconcnn.cli import run as sweep_cli

    assert sweep_cli(["cancel", str(sweep_dir), "--grace", "5"]) == 0
    assert "cancelled 2 runs (1 stopped on this machine" in capsys.readouterr().out
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, out
    assert assert_no_phantoms(sweep_dir, capsys) == {"S-core_s0": "cancelled", "S-core_s1": "cancelled"}
    assert train_steps(SweepDir(sweep_dir).run_dir("S-core_s1")) == []  # queued: never started
    assert launch_json(sweep_file, "--executor", "local", "--out", tmp_path / "out") == 0
    assert_every_step_once(sweep_dir, capsys)


def test_rm_rf_of_a_run_directory_mid_run_then_relaunch(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0")
    run_dir = SweepDir(sweep_dir).run_dir("S-core_s0")
    first = launcher(sweep_file, tmp_path / "out")
    wait_for("the run to train", lambda: training(sweep_dir, "S-core_s0", steps=7))

    # A scratch purge. Like `rm -rf` beside a writer, one pass can meet a file made after its listing
    # ("Directory not empty"): purge until the directory is gone.
    def purged() -> bool:
        shutil.rmtree(run_dir, ignore_errors=True)
        return not run_dir.exists()

    wait_for("the run directory to be purged", purged, timeout=30, interval=0.05)
    out, _ = first.communicate(timeout=120)
    assert "S-core_s0: not started" in out, out  # no run.json: none was re-created
    assert not run_dir.exists()
    assert assert_no_phantoms(sweep_dir, capsys) == {"S-core_s0": "lost"}  # never completed
    assert launch_json(sweep_file, "--executor", "local", "--out", tmp_path / "out") == 0
    assert_every_step_once(sweep_dir, capsys)


# ---------------------------------------------------------------- SLURM


def task_of(sweep_dir: Path, run_id: str) -> str:
    submission = SweepDir(sweep_dir).read_manifest().runs[run_id].last_submission
    assert submission and submission.handle
    return submission.handle


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_scancel_of_a_pending_and_a_running_task_then_relaunch(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path)
    assert slurm_launch(sweep_file, tmp_path / "out", "hydra.launcher.array_parallelism=1") == 0
    wait_for("the first task to train", lambda: training(sweep_dir, "S-core_s0"))
    running, pending = task_of(sweep_dir, "S-core_s0"), task_of(sweep_dir, "S-core_s2")
    assert slurm_cli.squeue_states([pending])[pending][0] == "PENDING"
    # Plain scancel, as a user types it: the pending task never gets a record of its own in sacct.
    subprocess.run(["scancel", pending, running], check=True)
    wait_for("the running task to end", lambda: running not in slurm_cli.squeue_states([running]))
    states = assert_no_phantoms(sweep_dir, capsys)
    assert states["S-core_s2"] == "lost" and states["S-core_s0"] in ("failed", "cancelled"), states
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    assert "2 runs submitted" in capsys.readouterr().out
    assert_every_step_once(sweep_dir, capsys)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_slurmctld_killed_and_restarted_mid_sweep(tmp_path, capsys):
    sweep_file, sweep_dir = sweep(tmp_path, seeds="0,1")
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    wait_for("a run to train", lambda: training(sweep_dir, "S-core_s0"))
    pid = int((SLURM_STATE / "run" / "slurmctld.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_for("slurmctld to be gone", lambda: not slurm_cli.slurm_available(timeout=2))
    try:
        runs = {r["run_id"]: r for r in status_of(sweep_dir, capsys)["runs"]}
        for run_id, run in runs.items():  # alive on this host: running; otherwise nothing can be said
            assert run["state"] in ("running", "unknown", "completed"), run
            if run["state"] == "running":
                assert processes.alive(read_process(SweepDir(sweep_dir).run_dir(run_id)))
    finally:
        subprocess.run([str(REPO / "scripts" / "slurm_start.sh")], check=True, capture_output=True)
    states = states_of(settle(sweep_dir, capsys))
    if set(states.values()) != {"completed"}:  # at most one relaunch
        resume_node()  # the restarted controller may have drained it (cluster.py), as an admin would
        assert slurm_launch(sweep_file, tmp_path / "out") == 0
    assert_every_step_once(sweep_dir, capsys)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_one_run_of_a_packed_task_then_the_rest_then_relaunch(tmp_path, capsys):
    from deconcnn.cli import run as sweep_cli

    # 48 steps of 0.4 s: the sibling must still train after its pack-mate is stopped, on a loaded machine too
    sweep_file, sweep_dir = sweep(tmp_path, step_seconds=0.4)
    assert slurm_launch(sweep_file, tmp_path / "out", *PACKED) == 0
    assert task_of(sweep_dir, "S-core_s0") == task_of(sweep_dir, "S-core_s1")
    wait_for("the packed runs to train", lambda: training(sweep_dir, "S-core_s0") and training(sweep_dir, "S-core_s1"))
    capsys.readouterr()
    assert sweep_cli(["cancel", str(sweep_dir), "--only", "S-core_s1", "--grace", "5"]) == 0
    assert "0 SLURM tasks scancel'ed" in capsys.readouterr().out  # its sibling still runs in that task
    wait_for(
        "the pack runner to stop it",
        lambda: not processes.alive(read_process(SweepDir(sweep_dir).run_dir("S-core_s1"))),
        timeout=60,
    )
    states = assert_no_phantoms(sweep_dir, capsys)
    assert states["S-core_s1"] == "cancelled" and states["S-core_s0"] == "running", states
    assert sweep_cli(["cancel", str(sweep_dir), "--grace", "5"]) == 0
    wait_for(
        "every task to end",
        lambda: not slurm_cli.squeue_states([task_of(sweep_dir, r) for r in ("S-core_s0", "S-core_s2")]),
        timeout=60,
    )
    states = assert_no_phantoms(sweep_dir, capsys)
    assert set(states.values()) <= {"cancelled", "completed"}, states
    assert slurm_launch(sweep_file, tmp_path / "out", *PACKED) == 0
    assert_every_step_once(sweep_dir, capsys)
