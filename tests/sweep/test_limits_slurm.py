"""The site's job limits and long id lists on the real local cluster (scripts/slurm_start.sh).

MaxSubmitJobs is set on the user's association with sacctmgr (the cluster enforces association
limits) and reset after the test: a sweep past it goes in waves, a launch with no room is refused
with the numbers, and the next wave goes once the first has ended. The scheduler commands are cut
into one id per call to prove the chunked path against the real squeue, sacct, scontrol and
scancel. Sizes no test cluster takes: test_scale.py, with a stand-in.
"""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deconcnn.backends import Handle
from deconcnn.backends.slurm import SlurmBackend, poll_handles
from deconcnn.backends.slurm import cli as slurm_cli
from sweeps import slurm_launch, status_of, wait_for, write_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture
def max_submit_jobs() -> Iterator[Callable[[int], int]]:
    """Leave room for n more jobs under this user's MaxSubmitJobs, and return how many jobs slurmctld
    already counts against it (an empty queue can still count some: deconcnn.backends.slurm.cli's
    job_limits); no limit again after the test."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    if "limits" not in next((line for line in config.splitlines() if "AccountingStorageEnforce" in line), ""):
        pytest.skip("the cluster does not enforce limits: restart it (scripts/slurm_stop.sh, scripts/slurm_start.sh)")

    def set_limit(n: int) -> None:
        cmd = ["sacctmgr", "-i", "modify", "user", getpass.getuser(), "set", f"MaxSubmitJobs={n}"]
        subprocess.run(cmd, capture_output=True, check=True, timeout=30)
        if n >= 0:  # sacctmgr tells slurmdbd, which tells slurmctld
            show = ["scontrol", "show", "assoc_mgr", f"users={getpass.getuser()}", "flags=assoc"]
            held = f"MaxSubmitJobs={n}("
            wait_for(
                f"slurmctld to hold {held}",
                lambda: held in subprocess.run(show, capture_output=True, text=True).stdout,
                timeout=30,
            )

    def room_for(n: int) -> int:
        set_limit(1000)  # slurmctld shows what it counts only against a limit
        counted = slurm_cli.job_limits().queued_mine
        set_limit(n + counted)
        return counted

    yield room_for
    set_limit(-1)


def test_a_sweep_past_max_submit_jobs_goes_in_waves(tmp_path: Path, capsys, max_submit_jobs) -> None:
    counted = max_submit_jobs(4)
    limit = f"MaxSubmitJobs (your association)={4 + counted}"
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    sweep_dir = tmp_path / "out" / "tiny"
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out", "hydra.launcher.array_parallelism=1") == 0
    out = capsys.readouterr().out
    assert "4 runs submitted" in out and "wave: 2 more runs wait" in out, out
    assert f"{limit}, {counted} of your jobs queued" in out
    # Full: refused with the numbers; nothing queued past the limit.
    assert slurm_launch(sweep_file, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"no room for a task now ({limit}, {4 + counted} of your jobs queued)" in err
    wait_for("the first wave to end", lambda: status_of(sweep_dir, capsys)["counts"]["all"]["completed"] == 4)
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    assert "2 runs submitted, skipped: 4 completed" in capsys.readouterr().out
    wait_for("the second wave to end", lambda: status_of(sweep_dir, capsys)["counts"]["all"]["completed"] == 6)


def test_scheduler_commands_in_chunks_of_one_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_cli, "ARG_BYTES", 8)  # one id per command
    arrays = [
        subprocess.run(
            ["sbatch", "--parsable", "--array=0-2", "--hold", "--wrap", "sleep 60"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
        for _ in range(2)
    ]
    handles = [Handle(SlurmBackend.kind, f"{job}_{task}") for job in arrays for task in range(3)]
    assert {s.state for s in poll_handles(handles).values()} == {"pending"}
    slurm_cli.scancel(*(h.id for h in handles))

    def all_ended() -> dict | None:
        states = poll_handles(handles)
        return states if all(s.state == "ended" for s in states.values()) else None

    states = wait_for("sacct to report the cancelled tasks", all_ended)
    assert {s.detail for s in states.values()} == {"CANCELLED"}
