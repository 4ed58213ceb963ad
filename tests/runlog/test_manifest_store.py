"""manifest.json's parsed copy (deconcnn.runlog.manifest_store): made by whoever writes the
manifest, used only for the bytes it was made from, never trusted where the manifest itself is
not, and never needed: without it, or with a damaged one, the manifest reads as before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fake_slurm
import pytest

from deconcnn.runlog.layout import MANIFEST_FILE, MANIFEST_PARSED, SUBMISSIONS_LOG
from deconcnn.runlog.manifest_store import manifest_digest, read_manifest
from deconcnn.runlog.records import LaunchRecord, Manifest, RunEntry, RunSubmission, fold_submissions
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import slurm_launch

REPO = Path(__file__).resolve().parents[2]


def parsed_afresh(sweep_dir: Path) -> Manifest:
    """What the manifest and its log say, read without the copy."""
    data = (sweep_dir / MANIFEST_FILE).read_bytes()
    manifest = Manifest.from_json(json.loads(data), sweep_dir.name)
    log = sweep_dir / SUBMISSIONS_LOG
    return fold_submissions(manifest, log.read_bytes(), log) if log.exists() else manifest


def copy_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / MANIFEST_PARSED).read_text())


def small_manifest(variant: str = "S-core") -> Manifest:
    submitted = RunSubmission("s1", "local", 10.0, "local:h:1:2.00:s1-0", None, ("a", "b"), "/logs/a.out")
    runs = {
        run_id: RunEntry(run_id, variant, ("experiment=x", f"seed={i}"), {"seed": i}, 1, (submitted,))
        for i, run_id in enumerate(("a", "b"))
    }
    launch = LaunchRecord("s1", 10.0, "local", ("a", "b"))
    return Manifest("tiny", "/sweeps/tiny.yaml", "f" * 16, "c" * 16, 1.0, (variant,), ("seed",), runs, (launch,))


@pytest.mark.slow  # a launch and a relaunch of the 216-run sweep (imports the training stack)
def test_the_216_run_sweep_reads_through_its_copy_as_its_manifest_says(tmp_path, monkeypatch):
    bin_dir = fake_slurm.install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep_file = REPO / "sweeps" / "loss_lin_slope.yaml"
    sweep_dir = tmp_path / "out" / "loss_lin_slope"
    assert slurm_launch(sweep_file, tmp_path / "out") == 0
    # The launch wrote the copy with the manifest, for its bytes.
    assert copy_of(sweep_dir)["manifest_sha256"] == manifest_digest((sweep_dir / MANIFEST_FILE).read_bytes())
    fake_slurm.end_all(tmp_path / "slurm")
    assert slurm_launch(sweep_file, tmp_path / "out") == 0  # every run failed: each is submitted again
    assert (sweep_dir / SUBMISSIONS_LOG).exists()  # appended to, the manifest left as it was
    manifest = read_manifest(sweep_dir)
    assert manifest == parsed_afresh(sweep_dir)
    assert len(manifest.runs) == 216 and {e.attempts for e in manifest.runs.values()} == {2}


def test_the_copy_is_what_a_reader_gets_for_the_bytes_it_was_made_from(tmp_path):
    SweepDir(tmp_path).write_manifest(small_manifest())
    assert read_manifest(tmp_path) == small_manifest()
    # Proof that the copy is read (a copy is never edited by hand): change what it says.
    copy = copy_of(tmp_path)
    for run in copy["runs"]:
        run[1] = "from-the-copy"
    (tmp_path / MANIFEST_PARSED).write_text(json.dumps(copy))
    assert {e.variant for e in read_manifest(tmp_path).runs.values()} == {"from-the-copy"}


def test_a_manifest_edited_in_place_same_size_same_mtime_is_read_again(tmp_path):
    SweepDir(tmp_path).write_manifest(small_manifest("S-core"))
    path = tmp_path / MANIFEST_FILE
    before = path.stat()
    path.write_text(path.read_text().replace("S-core", "S-bnof"))  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert {e.variant for e in read_manifest(tmp_path).runs.values()} == {"S-bnof"}
    # ... and the copy is made again for the new bytes.
    assert copy_of(tmp_path)["manifest_sha256"] == manifest_digest(path.read_bytes())


def test_a_restored_older_manifest_is_read_as_it_is(tmp_path):
    sd = SweepDir(tmp_path)
    sd.write_manifest(small_manifest("S-core"))
    backup = tmp_path / "backup.json"
    shutil.copy2(tmp_path / MANIFEST_FILE, backup)
    sd.write_manifest(small_manifest("S-adamw"))
    assert {e.variant for e in read_manifest(tmp_path).runs.values()} == {"S-adamw"}
    shutil.copy2(backup, tmp_path / MANIFEST_FILE)  # cp -a: its old mtime comes back too
    assert {e.variant for e in read_manifest(tmp_path).runs.values()} == {"S-core"}


def test_launches_appended_to_the_log_are_folded_over_the_copy(tmp_path):
    sd = SweepDir(tmp_path)
    manifest = small_manifest()
    sd.write_manifest(manifest)
    again = RunSubmission("s2", "local", 20.0, "local:h:1:3.00:s2-0", None, ("a",), None)
    sd.record_launch(manifest, LaunchRecord("s2", 20.0, "local", ("a",)), [again])
    assert (tmp_path / SUBMISSIONS_LOG).exists()
    read = read_manifest(tmp_path)
    assert read == parsed_afresh(tmp_path)
    assert read.runs["a"].attempts == 2 and read.runs["a"].last_submission == again and read.runs["b"].attempts == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_text('{"version": 1, "manifest_sha2'),  # torn
        lambda path: path.write_bytes(b"\xff\xfe garbage"),
        lambda path: path.write_text("[]"),
        lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "version": 99})),
        lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "runs": [["a", "S-core"]]})),
        lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "runs": {"a": 1}})),
        lambda path: path.unlink(),
    ],
    ids=["torn", "not-utf8", "not-a-copy", "another-version", "short-entry", "ill-typed", "deleted"],
)
def test_a_damaged_or_missing_copy_is_ignored_and_made_again(tmp_path, damage):
    SweepDir(tmp_path).write_manifest(small_manifest())
    damage(tmp_path / MANIFEST_PARSED)
    assert read_manifest(tmp_path) == small_manifest()
    assert copy_of(tmp_path)["manifest_sha256"] == manifest_digest((tmp_path / MANIFEST_FILE).read_bytes())
    assert read_manifest(tmp_path) == small_manifest()


def test_a_copy_naming_a_run_outside_runs_is_not_trusted(tmp_path):
    SweepDir(tmp_path).write_manifest(small_manifest())
    copy = copy_of(tmp_path)
    copy["runs"][0][0] = "../../escaped"
    (tmp_path / MANIFEST_PARSED).write_text(json.dumps(copy))
    assert set(read_manifest(tmp_path).runs) == {"a", "b"}  # the manifest's own, checked ids


def test_a_copy_that_cannot_be_written_changes_nothing(tmp_path):
    (tmp_path / MANIFEST_PARSED).mkdir()  # where the copy goes: neither readable nor replaceable
    SweepDir(tmp_path).write_manifest(small_manifest())
    assert read_manifest(tmp_path) == small_manifest()
    assert (tmp_path / MANIFEST_PARSED).is_dir()
