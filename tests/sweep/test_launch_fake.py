"""launch, status, relaunch and cancel against the in-process FakeBackend (tests/support/
fake_backend.py), a detached scheduler whose faults are one call: the sweep layer's logic for a
scheduler's answers, in seconds. The runs' part is played by writing their files. One real-cluster
test per fault class stays in test_faults.py / test_launch_slurm.py."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from contract import registered
from fake_backend import FakeBackend, FakeScheduler

from deconcnn.backends import Command, Handle
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.layout import CHECK_FILE
from deconcnn.runlog.records import LaunchRecord
from deconcnn.runlog.run_status import RUN_STATUS_FILE
from deconcnn.sweep import grid
from deconcnn.sweep.grid import plan
from deconcnn.sweep.launch import make_packs
from deconcnn.sweep.sweepdir import SweepDir, code_version
from sweeps import launch_json, status_of, write_sweep


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(FakeBackend, "scheduler", FakeScheduler(slots=1))
    with registered(FakeBackend):
        yield FakeBackend.scheduler


def fake_launch(sweep_file, out, *extra) -> int:
    return launch_json(sweep_file, "--executor", FakeBackend.kind, "--skip-check", "--out", out, *extra)


def handle_of(sweep_dir, run_id) -> Handle:
    submission = SweepDir(sweep_dir).read_manifest().runs[run_id].submissions[-1]
    return Handle(submission.executor, submission.handle)


def finish_run(sweep_dir, run_id, status="completed") -> None:
    """What the run itself writes when it ends: run.json of its submission."""
    submission = SweepDir(sweep_dir).read_manifest().runs[run_id].submissions[-1]
    run_dir = SweepDir(sweep_dir).run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_STATUS_FILE, {"status": status, "submission_id": submission.id})


def states(sweep_dir, capsys) -> dict[str, tuple[str, str | None]]:
    return {r["run_id"]: (r["state"], r["reason"]) for r in status_of(sweep_dir, capsys)["runs"]}


def test_packs_group_k_runs_of_one_variant():
    def commands(n, variant="S-core"):
        return [Command(f"{variant}_s{i}", "m", (), f"/tmp/{variant}_s{i}") for i in range(n)]

    packs = make_packs({"S-core": commands(5), "S-adamw": commands(2, "S-adamw")}, {"S-core": 2, "S-adamw": 3})
    assert [[c.name for c in p] for p in packs] == [
        ["S-core_s0", "S-core_s1"],
        ["S-core_s2", "S-core_s3"],
        ["S-core_s4"],
        ["S-adamw_s0", "S-adamw_s1"],
    ]


def test_a_detached_launch_returns_at_once_and_status_follows_the_scheduler(fake, tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    assert fake_launch(sweep_file, tmp_path) == 0
    assert f"{FakeBackend.kind}: 3 runs submitted" in capsys.readouterr().out
    sweep_dir = tmp_path / "tiny"
    manifest = SweepDir(sweep_dir).read_manifest()
    for entry in manifest.runs.values():
        [submission] = entry.submissions
        assert submission.executor == FakeBackend.kind and submission.job_id == submission.handle
    assert manifest.submissions[-1].described["fake_ids"]  # what the backend describes is kept
    # one slot: the first task runs, the others wait; the run has not started in the running one
    assert Counter(s for s, _ in states(sweep_dir, capsys).values()) == {"pending": 3}
    assert "has not started yet" in states(sweep_dir, capsys)["S-core_s0"][1]
    assert fake_launch(sweep_file, tmp_path) == 0  # pending and running runs are left alone
    assert "0 runs submitted, skipped: 3 pending" in capsys.readouterr().out
    for run_id in ("S-core_s0", "S-core_s1", "S-core_s2"):
        finish_run(sweep_dir, run_id)
        fake.finish(handle_of(sweep_dir, run_id), "COMPLETED")
    assert Counter(s for s, _ in states(sweep_dir, capsys).values()) == {"completed": 3}
    assert fake_launch(sweep_file, tmp_path) == 0
    assert "0 runs submitted, skipped: 3 completed" in capsys.readouterr().out


def test_a_task_cancelled_by_the_scheduler_is_cancelled_and_only_it_is_resubmitted(fake, tmp_path, capsys):
    """Moved from test_launch_slurm.py (the scancel fault class keeps its real-cluster test in
    test_faults.py)."""
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    assert fake_launch(sweep_file, tmp_path) == 0
    sweep_dir, victim = tmp_path / "tiny", "S-core_s2"
    fake.finish(handle_of(sweep_dir, victim), "CANCELLED")  # scancel of a pending task
    for run_id in ("S-core_s0", "S-core_s1"):
        finish_run(sweep_dir, run_id)
        fake.finish(handle_of(sweep_dir, run_id))
    found = states(sweep_dir, capsys)
    assert found[victim] == ("cancelled", "CANCELLED by the scheduler (scancel?)")
    assert Counter(s for s, _ in found.values()) == {"completed": 2, "cancelled": 1}
    capsys.readouterr()
    assert fake_launch(sweep_file, tmp_path) == 0
    assert "1 runs submitted, skipped: 2 completed" in capsys.readouterr().out
    assert SweepDir(sweep_dir).read_manifest().runs[victim].attempts == 2


@pytest.mark.parametrize(
    ("fault", "state", "reason", "relaunch"),
    [
        ("TIMEOUT", "failed", "its SLURM task ended TIMEOUT before the run finished", "1 runs submitted"),
        ("COMPLETED", "failed", "its SLURM task ended but the run did not finish (see its log)", "1 runs submitted"),
        ("lose", "lost", "the scheduler does not know its job", "1 runs submitted"),
        ("down", "unknown", "scheduler not answering: connection refused", "0 runs submitted, skipped: 1 unknown"),
    ],
)
def test_what_the_scheduler_says_of_an_unfinished_run_decides_its_state_and_the_relaunch(
    fake, tmp_path, capsys, fault, state, reason, relaunch
):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    assert fake_launch(sweep_file, tmp_path) == 0
    sweep_dir = tmp_path / "tiny"
    handle = handle_of(sweep_dir, "S-core_s0")
    if fault == "lose":
        fake.lose(handle)
    elif fault == "down":
        fake.down("connection refused")
    else:
        fake.finish(handle, fault)
    found_state, found_reason = states(sweep_dir, capsys)["S-core_s0"]
    assert found_state == state and reason in found_reason
    capsys.readouterr()
    assert fake_launch(sweep_file, tmp_path) == 0  # a scheduler that does not answer: nothing resubmitted
    assert relaunch in capsys.readouterr().out


def test_a_detached_launch_needs_a_passing_check_for_this_sweep_file_and_code(fake, tmp_path, capsys):
    """Moved from test_check.py (a SLURM launch refusing without a check): the gate is the launch's,
    for any detached backend."""
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    launch = ["launch", str(sweep_file), "--executor", FakeBackend.kind, "--out", str(tmp_path)]
    assert sweep_cli(launch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pre-launch check" in err and "--skip-check" in err
    assert not (tmp_path / "tiny").exists() and not fake.jobs
    sweep = plan(sweep_file, out=tmp_path).sweep
    check = {"passed": True, "fingerprint": sweep.fingerprint(), "code_version": code_version()}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / CHECK_FILE).write_text(json.dumps(check))
    assert sweep_cli(launch) == 0
    assert "1 runs submitted" in capsys.readouterr().out
    assert SweepDir(tmp_path / "tiny").read_manifest().submissions[-1].skip_check is False
    # The same check.json does not count for a changed sweep file.
    sweep_file.write_text(sweep_file.read_text().replace("seed: 0", "seed: 0,1"))
    other = tmp_path / "other"
    (other / "tiny").mkdir(parents=True)
    (other / "tiny" / CHECK_FILE).write_text(json.dumps(check))
    assert sweep_cli([*launch[:-1], str(other)]) == 2
    assert "another sweep file or code version" in capsys.readouterr().err


def test_cancel_asks_the_scheduler_only_for_tasks_whose_every_run_is_cancelled(fake, tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2,3")
    assert fake_launch(sweep_file, tmp_path, "--workers-per-gpu", "2") == 0  # two tasks of two runs
    sweep_dir = tmp_path / "tiny"
    first, second = handle_of(sweep_dir, "S-core_s0"), handle_of(sweep_dir, "S-core_s2")
    assert first == handle_of(sweep_dir, "S-core_s1") != second
    capsys.readouterr()
    assert sweep_cli(["cancel", str(sweep_dir), "--only", "S-core_s0"]) == 0
    assert "cancelled 1 runs" in capsys.readouterr().out
    assert "cancel" not in fake.calls  # its sibling still runs: the pack runner stops only it
    assert sweep_cli(["cancel", str(sweep_dir)]) == 0
    assert "cancelled 3 runs (0 stopped on this machine, 2 SLURM tasks scancel'ed)" in capsys.readouterr().out
    assert fake.jobs[first.id].detail == fake.jobs[second.id].detail == "CANCELLED"
    assert {s for s, _ in states(sweep_dir, capsys).values()} == {"cancelled"}


def test_a_job_limit_cuts_the_launch_into_waves(fake, tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0,1,2")
    fake.room = 1
    assert fake_launch(sweep_file, tmp_path) == 0
    out = capsys.readouterr().out
    assert "1 runs submitted" in out and "wave: 2 more runs wait for room under the site's job limit" in out
    fake.room = None
    fake.refuse("MaxSubmitJobs", after=1)  # the scheduler takes one more task, then refuses
    assert fake_launch(sweep_file, tmp_path) == 0
    out = capsys.readouterr().out
    assert "1 runs submitted, skipped: 1 pending" in out and "(MaxSubmitJobs)" in out


def test_a_manifest_written_between_the_launch_s_first_read_and_its_lock_is_read_again(
    fake, tmp_path, capsys, monkeypatch
):
    """The launch reads the manifest once before its lock (a corrupt one refuses without taking it)
    and uses that read under the lock unless the file changed: another launch's write is kept."""
    sweep_file = write_sweep(tmp_path / "s.yaml")
    assert fake_launch(sweep_file, tmp_path / "out") == 0
    sd = SweepDir(tmp_path / "out" / "tiny")
    for run_id in sd.read_manifest().runs:
        finish_run(sd.path, run_id, "failed")
    real_lock = SweepDir.lock

    def lock_after_another_launch(self):
        manifest = self.read_manifest()  # what a launch that took the lock just before this one wrote
        self.write_manifest(manifest.logged(LaunchRecord("other-launch", 0.0, "fake", (), note="written meanwhile")))
        return real_lock(self)

    monkeypatch.setattr(SweepDir, "lock", lock_after_another_launch)
    assert fake_launch(sweep_file, tmp_path / "out") == 0
    ids = [s.id for s in sd.read_manifest().submissions]
    assert "other-launch" in ids and len(ids) == 3


def test_a_relaunch_of_the_same_source_takes_its_runs_from_the_manifest(fake, tmp_path, capsys, monkeypatch):
    """The manifest records what its runs were expanded from (grid.sweep_source); a relaunch of the
    same sweep file, overrides and code lists the manifest's runs instead of expanding the grid."""
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="0,1,2")
    assert fake_launch(sweep_file, tmp_path) == 0
    sd = SweepDir(tmp_path / "tiny")
    expanded_plan = plan(sweep_file, out=tmp_path)  # a dry run's: always expanded
    assert sd.read_manifest().grid_source == expanded_plan.sweep.source is not None
    expansions = []
    real = grid.BasicSweeper.split_arguments

    def counting(*args):
        expansions.append(args)
        return real(*args)

    monkeypatch.setattr(grid.BasicSweeper, "split_arguments", staticmethod(counting))
    relaunch = plan(sweep_file, out=tmp_path, relaunch=True)
    assert not expansions and relaunch.read is not None and relaunch.read[1] == sd.read_manifest()
    assert [(r.run_id, r.variant, r.overrides, r.params) for r in relaunch.runs] == [
        (r.run_id, r.variant, r.overrides, r.params) for r in expanded_plan.runs
    ]
    # Another override for every run: expanded, and refused as a changed sweep.
    assert plan(sweep_file, out=tmp_path, relaunch=True, overrides=["optim.lr=0.3"]).runs and expansions
    capsys.readouterr()
    assert fake_launch(sweep_file, tmp_path, "optim.lr=0.3") == 2
    assert "changed since this sweep was launched: 3 changed overrides" in capsys.readouterr().err
    # A manifest written before sources were recorded: expanded as before.
    expansions.clear()
    sd.write_manifest(replace(sd.read_manifest(), grid_source=None))
    assert plan(sweep_file, out=tmp_path, relaunch=True).runs and expansions
    capsys.readouterr()
    assert fake_launch(sweep_file, tmp_path) == 0


@pytest.mark.parametrize("command", ["status", "relaunch"])
def test_a_run_that_ends_while_the_scheduler_is_asked_reads_completed_not_failed(
    fake, tmp_path, capsys, monkeypatch, command
):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    assert fake_launch(sweep_file, tmp_path) == 0
    sweep_dir = tmp_path / "tiny"
    handle = handle_of(sweep_dir, "S-core_s0")
    finish_run(sweep_dir, "S-core_s0", status="running")  # its run.json as the command first reads it
    real_poll = FakeBackend.poll

    def ending_meanwhile(self, handles):
        # Between the command's first read of the run's files and the scheduler's answer, the
        # run finishes and its task ends.
        finish_run(sweep_dir, "S-core_s0")
        fake.finish(handle, "COMPLETED")
        return real_poll(self, handles)

    monkeypatch.setattr(FakeBackend, "poll", ending_meanwhile)
    if command == "status":
        assert states(sweep_dir, capsys)["S-core_s0"] == ("completed", None)
    else:
        capsys.readouterr()
        assert fake_launch(sweep_file, tmp_path) == 0
        assert "0 runs submitted, skipped: 1 completed" in capsys.readouterr().out
        assert fake.calls.count("submit") == 1  # the first launch's only
