"""The submission log (submissions.jsonl): a relaunch appends its launch as one line instead of
rewriting every run's manifest entry; every reader folds the log into the manifest. Each fault of
the new file: a torn last line, a damaged or foreign line, a newer format, a full write of the
manifest killed before it emptied the log, a relaunch killed between sbatch and its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fake_slurm
import pytest

from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.atomic import json_text_by_line, write_json_atomic, write_text_atomic
from deconcnn.runlog.layout import NotASweep
from deconcnn.runlog.records import FORMAT_KEY, SUBMISSIONS_FORMAT, LaunchRecord, RunSubmission, submission_line
from deconcnn.sweep import sweepdir as sweepdir_module
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import LOCAL_SLURM, slurm_launch, status_of, write_sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def launched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A SLURM sweep of 20 runs (fake_slurm) launched once, its tasks ended; -> (sweep file, its
    directory, the fake's root). Every run but s0 and s1 completed: a relaunch submits those two."""
    root = tmp_path / "slurm"
    bin_dir = fake_slurm.install(root, max_array_size=4)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep_file = write_sweep(tmp_path / "s.yaml", seeds="range(0,20)")
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    sd = SweepDir(tmp_path / "out" / "tiny")
    fake_slurm.end_all(root, "FAILED")
    for seed in range(2, 20):
        sd.run_dir(f"S-core_s{seed}").mkdir(parents=True)
        write_json_atomic(sd.run_dir(f"S-core_s{seed}") / "run.json", {"status": "completed"})
    return sweep_file, sd, root


def relaunch(sweep_file: Path, sd: SweepDir, capsys, expected: str) -> None:
    capsys.readouterr()
    assert slurm_launch(sweep_file, sd.path.parent) == 0
    assert expected in capsys.readouterr().out


def test_a_relaunch_appends_a_line_and_leaves_the_manifest_as_it_was(launched, capsys) -> None:
    sweep_file, sd, _ = launched
    before = sd.manifest_path.read_bytes(), sd.manifest_path.stat().st_ino
    relaunch(sweep_file, sd, capsys, "2 runs submitted, skipped: 18 completed")
    assert (sd.manifest_path.read_bytes(), sd.manifest_path.stat().st_ino) == before
    [line] = sd.log_path.read_text().splitlines()
    assert sorted(json.loads(line)["launch"]["runs"]) == ["S-core_s0", "S-core_s1"]
    manifest = sd.read_manifest()
    assert [manifest.runs[f"S-core_s{i}"].attempts for i in (0, 1, 2)] == [2, 2, 1]
    assert len(manifest.submissions) == 2
    states = {r["run_id"]: (r["state"], r["attempts"]) for r in status_of(sd.path, capsys)["runs"]}
    assert states["S-core_s0"] == ("pending", 2) and states["S-core_s2"] == ("completed", 1)
    # A launch with nothing to submit is a line too (its runs are all pending now).
    relaunch(sweep_file, sd, capsys, "0 runs submitted")
    assert len(sd.log_path.read_text().splitlines()) == 2
    assert sd.read_manifest().submissions[-1].note == "nothing to submit"


def test_a_log_grown_past_its_share_is_folded_into_the_manifest(launched, capsys, monkeypatch) -> None:
    sweep_file, sd, _ = launched
    monkeypatch.setattr(sweepdir_module, "LOG_SHARE", 0.0)
    relaunch(sweep_file, sd, capsys, "2 runs submitted")  # the log is empty: appended
    assert sd.log_path.exists()
    relaunch(sweep_file, sd, capsys, "0 runs submitted")  # the log is over its share: folded in
    assert not sd.log_path.exists()
    on_disk = json.loads(sd.manifest_path.read_text())
    assert len(on_disk["submissions"]) == 3 and on_disk["runs"]["S-core_s0"]["attempts"] == 2


def test_a_torn_last_line_is_ignored_with_a_note_and_cut_off_before_the_next_line(launched, capsys) -> None:
    sweep_file, sd, _ = launched
    relaunch(sweep_file, sd, capsys, "2 runs submitted")
    whole = sd.log_path.read_bytes()
    # What a launch killed while appending leaves: part of its line, no newline.
    torn = submission_line(LaunchRecord("torn", 1.0, "slurm", ("S-core_s2",)), [])
    sd.log_path.write_bytes(whole + torn[: len(torn) // 2])
    capsys.readouterr()
    manifest = sd.read_manifest()
    err = capsys.readouterr().err
    assert "its last line is torn (a launch was killed while writing it) and is ignored" in err
    assert str(sd.log_path) in err and len(err.strip().splitlines()) == 1
    assert not manifest.recorded("torn") and len(manifest.submissions) == 2
    fake_slurm.end_all(launched[2], "FAILED")
    relaunch(sweep_file, sd, capsys, "2 runs submitted")
    lines = sd.log_path.read_bytes().split(b"\n")
    assert lines[0] == whole.rstrip(b"\n") and lines[-1] == b"" and len(lines) == 3  # two whole lines
    assert [sd.read_manifest().runs["S-core_s0"].attempts] == [3]
    assert "torn" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"{not json\n", "is corrupt (line 2: "),
        (b"[1, 2]\n", "is corrupt (line 2: not a launch with a packs list)"),
        (b'{"launch": {"id": "x", "runs": []}, "packs": [{"pack": ["../../etc"]}]}\n', "names runs the manifest"),
        (b'{"launch": 3, "packs": []}\n', "a submission record is not an object"),
        (b"\xff\xfe\n", "is corrupt (line 2: "),
        (json.dumps({FORMAT_KEY: SUBMISSIONS_FORMAT + 1, "launch": {}, "packs": []}).encode() + b"\n", "upgrade"),
    ],
)
def test_a_damaged_line_refuses_the_sweep_in_one_line(launched, capsys, line: bytes, says: str) -> None:
    sweep_file, sd, _ = launched
    relaunch(sweep_file, sd, capsys, "2 runs submitted")
    sd.log_path.write_bytes(sd.log_path.read_bytes() + line)
    with pytest.raises(NotASweep) as refused:
        sd.read_manifest()
    message = str(refused.value)
    assert message.startswith(str(sd.log_path)) and says in message and "\n" not in message
    capsys.readouterr()
    assert sweep_cli(["status", str(sd.path)]) == 2
    assert says in capsys.readouterr().err


def test_a_manifest_written_whole_but_killed_before_it_emptied_the_log_counts_each_launch_once(
    launched, capsys
) -> None:
    sweep_file, sd, _ = launched
    relaunch(sweep_file, sd, capsys, "2 runs submitted")
    folded = sd.read_manifest()
    # write_manifest's first step alone: the manifest holds the log's launch, the log is still there.
    write_text_atomic(sd.manifest_path, json_text_by_line(folded.to_json(), "runs"))
    assert sd.log_path.exists()
    again = sd.read_manifest()
    assert again == folded and again.runs["S-core_s0"].attempts == 2 and len(again.submissions) == 2


def test_a_reader_racing_a_launch_that_folds_the_log_in_misses_no_launch(launched, capsys, monkeypatch) -> None:
    sweep_file, sd, _ = launched
    relaunch(sweep_file, sd, capsys, "2 runs submitted")  # a line in the log
    folded = sd.read_manifest()
    assert folded is not None and folded.runs["S-core_s0"].attempts == 2
    reads: list[str] = []

    def folding_after_the_first_read(real):
        # Right after the reader's first read of either file, another launch folds the log in.
        def read(self, *args, **kwargs):
            data = real(self, *args, **kwargs)
            if self in (sd.manifest_path, sd.log_path) and not reads:
                reads.append(self.name)
                sd.write_manifest(folded)
            return data

        return read

    monkeypatch.setattr(Path, "read_text", folding_after_the_first_read(Path.read_text))
    monkeypatch.setattr(Path, "read_bytes", folding_after_the_first_read(Path.read_bytes))
    assert sd.read_manifest() == folded
    assert reads == [sd.log_path.name] and not sd.log_path.exists()


@pytest.mark.slow
def test_a_relaunch_killed_between_sbatch_and_its_line_is_reconciled(launched, capsys) -> None:
    sweep_file, sd, root = launched
    relaunch(sweep_file, sd, capsys, "2 runs submitted")  # a line in the log
    fake_slurm.end_all(root, "FAILED")
    accepted = json.loads((root / fake_slurm.STATE).read_text())["sbatch_accepted"]
    fake_slurm.configure(root, kill_launcher_after=accepted + 1)
    argv = ["launch", str(sweep_file), "--executor", "slurm", "--skip-check", "--out", str(sd.path.parent)]
    code = "import sys; from deconcnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv, *LOCAL_SLURM], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert sd.journal_path.exists() and len(sd.log_path.read_text().splitlines()) == 1
    assert sd.read_manifest().runs["S-core_s0"].attempts == 2  # the killed launch recorded nothing
    fake_slurm.configure(root, kill_launcher_after=None)
    relaunch(sweep_file, sd, capsys, "0 runs submitted")  # its runs were queued: reconciled, not resubmitted
    manifest = sd.read_manifest()
    assert not sd.journal_path.exists() and manifest.runs["S-core_s0"].attempts == 3
    assert manifest.runs["S-core_s2"].attempts == 1 and len(manifest.submissions) == 4


def test_the_log_s_line_round_trips_a_launch() -> None:
    record = LaunchRecord("s", 2.0, "slurm", ("a",), described={"array_job_ids": ["7"]})
    pack = RunSubmission("s", "slurm", 2.0, "7_0", "7_0", ("a",), "/x/log")
    entry = json.loads(submission_line(record, [pack]))
    assert LaunchRecord.from_json(entry["launch"]) == record
    assert RunSubmission.from_json(entry["packs"][0]) == pack
