"""Sweeps of tens of thousands of tasks, against a recording stand-in for SLURM (fake_slurm.py).

No scheduler command passes the kernel's limit on argument length, status asks squeue by array job
id and sacct only about the runs their own files leave open, the site's job limits cut a launch
into waves (or refuse it, with the numbers), and a launch killed between sbatch's answer and its
manifest leaves a record that the next launch reconciles. The same behaviours on the real local
cluster: test_limits_slurm.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import fake_slurm
import pytest

from deconcnn.backends import Handle, Submission
from deconcnn.backends.journal import Journal, array_name
from deconcnn.backends.slurm import SlurmBackend, poll_handles, reconcile
from deconcnn.backends.slurm import cli as slurm_cli
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.runlog.layout import VALIDATED_FILE
from deconcnn.runlog.records import LaunchRecord, Manifest, RunEntry
from deconcnn.sweep import grid
from deconcnn.sweep import validated as validated_module
from deconcnn.sweep.launch import record_submission
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import LOCAL_SLURM, slurm_launch, status_of, write_sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """install(**settings) -> the fake's root, its commands first on PATH."""

    def install(**settings: object) -> Path:
        root = tmp_path / "slurm"
        bin_dir = fake_slurm.install(root, **settings)  # type: ignore[arg-type]
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return root

    return install


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_scheduler_commands_stay_below_the_argument_limit(fake, tmp_path: Path) -> None:
    root = fake()
    # 20,000 single-task arrays: their array ids alone join to 140 KB, past Linux's 128 KiB for one
    # argument (10,500 task ids crashed status, relaunch and cancel before).
    handles = [f"{100000 + i}_0" for i in range(20000)]
    fake_slurm.queue(root, {h.split("_")[0]: 1 for h in handles})
    with pytest.raises(OSError) as info:
        subprocess.run(["sacct", "--jobs", ",".join(slurm_cli.array_ids(handles))], check=False)
    assert info.value.errno == errno.E2BIG
    fake_slurm.end_all(root)
    (root / fake_slurm.CALLS).write_text("")
    assert {s.detail for s in poll_handles([Handle(SlurmBackend.kind, h) for h in handles]).values()} == {"COMPLETED"}
    fake_slurm.queue(root, {h.split("_")[0]: 1 for h in handles})
    slurm_cli.scancel(*handles)
    calls = fake_slurm.calls(root)
    for call in calls:
        assert sum(len(a) + 1 for a in call["argv"]) < 2 * slurm_cli.ARG_BYTES, call["cmd"]
    asked = {j for c in calls if c["cmd"] == "sacct" for j in option(c["argv"], "--jobs").split(",")}
    assert asked == set(slurm_cli.array_ids(handles))
    held = {j for c in calls if c["cmd"] == "scontrol" for j in c["argv"][-1].split(",")}
    cancelled = {a for c in calls if c["cmd"] == "scancel" for a in c["argv"] if not a.startswith("-")}
    assert held == cancelled == set(handles)
    assert fake_slurm._queued(fake_slurm._load(root)) == 0


def test_status_of_50000_tasks_is_one_squeue_and_one_sacct(fake) -> None:
    root = fake()
    arrays = {str(7000 + a): 1000 for a in range(50)}
    fake_slurm.queue(root, arrays)
    handles = [f"{job}_{t}" for job, n in arrays.items() for t in range(n)]
    fake_slurm.end_all(root)
    (root / fake_slurm.CALLS).write_text("")
    states = poll_handles([Handle(SlurmBackend.kind, h) for h in handles])
    assert len(states) == 50000 and {s.state for s in states.values()} == {"ended"}
    assert [c["cmd"] for c in fake_slurm.calls(root)] == ["squeue", "sacct"]


def test_status_asks_the_scheduler_only_about_runs_their_files_leave_open(
    fake, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = fake()
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,40)")
    sweep_dir = SweepDir(tmp_path / "out" / "tiny")
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    fake_slurm.end_all(root)
    handles = {r: e.last_submission.handle for r, e in manifest_of(sweep_dir.path).runs.items()}
    kept, diverged, failed = [f"S-core_s{s}" for s in range(36)], "S-core_s36", "S-core_s37"
    for run_id, status in [*((r, "completed") for r in kept), (diverged, "diverged"), (failed, "failed")]:
        sweep_dir.run_dir(run_id).mkdir(parents=True)
        write_json_atomic(sweep_dir.run_dir(run_id) / "run.json", {"status": status, "run_id": run_id})
    open_runs = sorted(set(handles) - {*kept, diverged})  # failed, and two that never started
    (root / fake_slurm.CALLS).write_text("")
    runs = {r["run_id"]: r for r in status_of(sweep_dir.path, capsys)["runs"]}
    (squeue, sacct) = fake_slurm.calls(root)
    assert squeue["cmd"] == "squeue" and option(squeue["argv"], "--jobs") == slurm_cli.array_ids(handles.values())[0]
    # Those few by task id: sacct reads their records, not every task of their array.
    assert sacct["cmd"] == "sacct" and sorted(option(sacct["argv"], "--jobs").split(",")) == sorted(
        handles[r] for r in open_runs
    )
    assert {r: runs[r]["state"] for r in open_runs} == {r: "failed" for r in open_runs}
    assert {runs[r]["scheduler_state"] for r in open_runs} == {"COMPLETED"}
    assert {runs[r]["state"] for r in kept} == {"completed"} and runs[diverged]["state"] == "diverged"
    assert {runs[r]["scheduler_state"] for r in (*kept, diverged)} == {None}  # not asked: not needed
    # More open tasks than one command names: sacct is asked by array, still once.
    monkeypatch.setattr(slurm_cli, "ARG_BYTES", 20)
    (root / fake_slurm.CALLS).write_text("")
    assert {r["run_id"]: r["state"] for r in status_of(sweep_dir.path, capsys)["runs"]} == {
        r: v["state"] for r, v in runs.items()
    }
    sacct = [c for c in fake_slurm.calls(root) if c["cmd"] == "sacct"]
    assert [option(c["argv"], "--jobs") for c in sacct] == slurm_cli.array_ids(handles.values())
    # Every run kept: the scheduler is not asked at all.
    for run_id in open_runs:
        sweep_dir.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        write_json_atomic(sweep_dir.run_dir(run_id) / "run.json", {"status": "completed", "run_id": run_id})
    (root / fake_slurm.CALLS).write_text("")
    assert status_of(sweep_dir.path, capsys)["counts"]["all"]["completed"] == 39
    assert fake_slurm.calls(root) == []


def test_id_chunks_keep_order_and_budget() -> None:
    ids = [str(i) for i in range(30000)]
    chunks = slurm_cli.id_chunks(ids, budget=1000)
    assert [i for c in chunks for i in c] == ids
    assert all(len(",".join(c)) <= 1000 for c in chunks) and len(chunks) > 100


# ---------------------------------------------------------------- launches


def manifest_of(sweep_dir: Path) -> Manifest:
    return SweepDir(sweep_dir).require_manifest()


def queued_handles(root: Path) -> set[str]:
    data = fake_slurm._load(root)
    return {
        fake_slurm._tid(job_id, job, t)
        for job_id, job in data["jobs"].items()
        for t in range(job["tasks"])
        if fake_slurm._task_state(job, t) == "PENDING"
    }


def recorded_handles(sweep_dir: Path) -> set[str | None]:
    return {s.handle for entry in manifest_of(sweep_dir).runs.values() for s in entry.submissions}


def test_a_sweep_past_max_submit_goes_in_waves(fake, tmp_path: Path, capsys) -> None:
    root = fake(max_submit=4, max_array_size=3)
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    sweep_dir = tmp_path / "out" / "tiny"
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "4 runs submitted" in out
    assert "wave: 2 more runs wait" in out and "MaxSubmitJobs (your association)=4, 0 of your jobs queued" in out
    assert f"the next wave: deconcnn-sweep launch {sweep_file} --executor slurm" in out
    assert recorded_handles(sweep_dir) == queued_handles(root) and len(queued_handles(root)) == 4
    counts = status_of(sweep_dir, capsys)["counts"]["all"]
    assert (counts["pending"], counts["missing"]) == (4, 2)
    # Full: refused with the numbers, nothing queued, nothing recorded.
    assert slurm_launch(sweep_file, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no room for a task now (MaxSubmitJobs (your association)=4, 4 of your jobs queued)" in err
    assert "2 tasks (2 runs) wait" in err
    # The first wave ends (failed: nothing trains here); the runs it left waiting go first.
    fake_slurm.end_all(root)
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    assert "4 runs submitted" in capsys.readouterr().out
    attempts = {run_id: entry.attempts for run_id, entry in manifest_of(sweep_dir).runs.items()}
    assert attempts == {"S-core_s0": 2, "S-core_s1": 2, "S-core_s2": 1, "S-core_s3": 1, "S-core_s4": 1, "S-core_s5": 1}


def test_a_limit_refusal_mid_launch_keeps_the_arrays_accepted(fake, tmp_path: Path, capsys) -> None:
    # A limit sacctmgr does not show (a partition's QOS): sbatch refuses the third array.
    root = fake(max_submit=4, report_limits=False, max_array_size=2)
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    sweep_dir = tmp_path / "out" / "tiny"
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "4 runs submitted" in out and "wave: 2 more runs wait" in out and "QOSMaxSubmitJobPerUserLimit" in out
    assert recorded_handles(sweep_dir) == queued_handles(root) and len(queued_handles(root)) == 4
    assert not SweepDir(sweep_dir).journal_path.exists()


def test_any_other_refusal_mid_launch_cancels_what_was_accepted(fake, tmp_path: Path, capsys) -> None:
    root = fake(refuse_after=2, max_array_size=2)
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out") == 2
    assert "Invalid account" in capsys.readouterr().err
    assert queued_handles(root) == set()
    scancels = [c["argv"] for c in fake_slurm.calls(root) if c["cmd"] == "scancel"]
    assert scancels == [["--verbose", "1000", "1001"]]  # by array job id: two short arguments
    assert not (tmp_path / "out" / "tiny").exists()


def array_folders(sweep_dir: Path) -> dict[str, set[str]]:
    """The folder of each recorded task log (relative to slurm/) -> the runs whose log it holds."""
    folders: dict[str, set[str]] = {}
    for run_id, entry in manifest_of(sweep_dir).runs.items():
        for submission in entry.submissions:
            log = Path(str(submission.log))
            assert log.name == f"{submission.handle}_0_log.out" and log.parent.is_dir()
            folders.setdefault(str(log.parent.relative_to(sweep_dir / "slurm")), set()).add(run_id)
    return folders


def test_each_array_keeps_its_scripts_and_logs_in_a_folder_of_its_own(fake, tmp_path: Path, capsys) -> None:
    fake(max_array_size=2)
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,5)")
    sweep_dir = tmp_path / "out" / "tiny"
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    (sid,) = {s.id for s in manifest_of(sweep_dir).submissions}
    assert array_folders(sweep_dir) == {
        f"{sid}-0": {"S-core_s0", "S-core_s1"},
        f"{sid}-1": {"S-core_s2", "S-core_s3"},
        f"{sid}-2": {"S-core_s4"},  # one pack: a plain job
    }
    assert all(p.is_dir() for p in (sweep_dir / "slurm").iterdir())  # nothing per task in slurm/ itself
    assert list((sweep_dir / "slurm" / f"{sid}-0").glob("*_submission.sh"))
    # status points at the task's log until the run writes its own stdout.log
    logs = {r["run_id"]: r["log"] for r in status_of(sweep_dir, capsys)["runs"]}
    assert Path(logs["S-core_s4"]).parent.name == f"{sid}-2"


@pytest.mark.slow
def test_a_launch_killed_between_sbatch_and_its_manifest_is_reconciled(fake, tmp_path: Path, capsys) -> None:
    root = fake(max_array_size=2, kill_launcher_after=2)
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    sweep_dir = tmp_path / "out" / "tiny"
    # The second sbatch SIGKILLs the launcher as soon as it has answered: two arrays are queued,
    # the journal holds the first one's id, no manifest holds either.
    argv = ["launch", str(sweep_file), "--executor", "slurm", "--skip-check", "--out", str(tmp_path / "out")]
    code = "import sys; from deconcnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv, *LOCAL_SLURM], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    journal = SweepDir(sweep_dir).journal_path
    assert journal.exists() and not (sweep_dir / "manifest.json").exists()
    assert len(journal.read_text().splitlines()) == 2  # the plan, and array 0's job id only
    assert len(queued_handles(root)) == 4
    capsys.readouterr()
    assert sweep_cli(["status", str(sweep_dir)]) == 2  # no manifest yet: "launch it first"
    assert "a launch is submitting, or was killed while it did" in capsys.readouterr().err
    # The next launch records both arrays (the second found by its job name) and queues only the rest.
    fake_slurm.configure(root, kill_launcher_after=None)
    capsys.readouterr()
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "reconciled from its journal: 4 tasks of 6 were queued and are now recorded" in captured.err
    assert "2 runs submitted" in captured.out
    assert not journal.exists()
    assert recorded_handles(sweep_dir) == queued_handles(root) and len(queued_handles(root)) == 6
    manifest = manifest_of(sweep_dir)
    assert all(entry.attempts == 1 for entry in manifest.runs.values())
    # The reconciled tasks' logs are in their arrays' folders, like the new submission's.
    first, second = (s.id for s in manifest.submissions)
    assert array_folders(sweep_dir) == {
        f"{first}-0": {"S-core_s0", "S-core_s1"},
        f"{first}-1": {"S-core_s2", "S-core_s3"},
        f"{second}-0": {"S-core_s4", "S-core_s5"},
    }


@pytest.mark.slow
def test_a_relaunch_validates_only_the_runs_it_submits_and_only_when_something_changed(
    fake, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = fake()
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,6)")
    sweep_dir = SweepDir(tmp_path / "out" / "tiny")
    validated: list[str] = []
    real = grid.validate_runs
    composed: list[tuple[str, ...]] = []  # the launcher settings Hydra composed, by launcher overrides
    real_settings = SlurmBackend.settings

    def recording(runs, **kwargs):
        runs = list(runs)
        validated.extend(r.run_id for r in runs)
        return real(runs, **kwargs)

    def composing(base, launcher):
        composed.append(tuple(launcher))
        return real_settings(base, launcher)

    # A module the validating process has loaded, as a user's target module would be.
    (tmp_path / "user_module_21e.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("user_module_21e")
    monkeypatch.setattr(grid, "validate_runs", recording)
    monkeypatch.setattr(SlurmBackend, "settings", composing)
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    assert len(validated) == 6  # a first launch: every run
    assert composed == [tuple(LOCAL_SLURM)]
    fake_slurm.end_all(root)
    for seed in range(4):
        sweep_dir.run_dir(f"S-core_s{seed}").mkdir(parents=True)
        write_json_atomic(sweep_dir.run_dir(f"S-core_s{seed}") / "run.json", {"status": "completed"})

    def relaunch(expected: str, *extra: str) -> list[str]:
        validated.clear()
        composed.clear()
        capsys.readouterr()
        assert slurm_launch(sweep_file, tmp_path / "out", *extra) == 0
        assert expected in capsys.readouterr().out
        fake_slurm.end_all(root)
        return sorted(validated)

    # The same code, configs and Python: the first launch's validation holds, nothing is imported,
    # and the launcher settings are the ones composed then.
    assert relaunch("2 runs submitted, skipped: 4 completed") == []
    assert composed == []
    # Other launcher settings are composed (and checked) again, then kept beside the first ones.
    assert relaunch("2 runs submitted", "hydra.launcher.timeout_min=30") == []
    assert composed == [(*LOCAL_SLURM, "hydra.launcher.timeout_min=30")]
    assert relaunch("2 runs submitted", "hydra.launcher.timeout_min=30") == []
    assert composed == []
    # Whatever it depends on changed: the runs it submits are validated again, the settings composed.
    (tmp_path / "user_module_21e.py").write_text("X = 22\n")
    assert relaunch("2 runs submitted, skipped: 4 completed") == ["S-core_s4", "S-core_s5"]
    assert composed == [tuple(LOCAL_SLURM)]
    assert relaunch("2 runs submitted") == []  # and recorded again
    assert composed == []
    monkeypatch.setattr(validated_module, "code_version", lambda: "another")
    assert relaunch("2 runs submitted") == ["S-core_s4", "S-core_s5"]
    assert composed == [tuple(LOCAL_SLURM)]
    (sweep_dir.path / VALIDATED_FILE).write_text('{"version": 1, "sources": [')  # corrupt: ignored
    assert relaunch("2 runs submitted") == ["S-core_s4", "S-core_s5"]
    assert composed == [tuple(LOCAL_SLURM)]


def test_the_journal_finds_arrays_by_name_and_a_one_pack_job_by_its_plain_id(fake, tmp_path: Path) -> None:
    root = fake()
    submission = Submission("abc123", "deconcnn-x", submitted_at=1.0)
    journal = Journal(tmp_path / "submitting.jsonl", submission, LaunchRecord("abc123", 1.0, "slurm", ()).to_json())
    journal.begin([[["a", "b"], ["c"]], [["d"]]])
    # sbatch took both; the launch died before writing either id down.
    fake_slurm.queue(root, {"500": 2})
    data = fake_slurm._load(root)
    data["jobs"]["500"]["name"] = array_name(submission, 0)
    plain = {"name": array_name(submission, 1), "tasks": 1, "array": False, "default": "PENDING", "states": {}}
    data["jobs"]["501"] = plain
    fake_slurm._save(root, data)
    empty = Manifest("x", None, None, None, 0.0, (), (), {r: RunEntry(r, "v", (), {}) for r in "abcd"})
    written: list[Manifest] = []
    backend = SlurmBackend(tmp_path, {})
    line = reconcile(
        journal.path,
        empty,
        lambda record, sub, packs: record_submission(empty, record, sub, packs, backend),
        written.append,
        backend,
    )
    assert line and "3 tasks of 3 were queued and are now recorded (arrays 500, 501)" in line
    [manifest] = written
    handles = {r: e.submissions[0].handle for r, e in manifest.runs.items()}
    assert handles == {"a": "500_0", "b": "500_0", "c": "500_1", "d": "501"}
    assert manifest.submissions[-1].recovered and manifest.submissions[-1].described["array_job_ids"] == ["500", "501"]
    assert not journal.path.exists()
    # A journal whose submission the manifest records already is only removed.
    journal.begin([[["a"]]])
    assert reconcile(journal.path, manifest, lambda *a: manifest, written.append, backend) is None
    assert not journal.path.exists() and len(written) == 1
