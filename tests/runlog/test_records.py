"""The sweep's own files as typed records (deconcnn.runlog.records): each goes to JSON and back
unchanged, a file written before format versions (tests/runlog/format1, by the code of 931def1)
reads as version 1, a newer format is refused with one clear line, an ill-typed field with the
file's one-line error."""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from deconcnn.analysis.sources import read_source
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.layout import MANIFEST_FILE, NotASweep
from deconcnn.runlog.manifest_store import read_manifest
from deconcnn.runlog.records import (
    FORMAT_KEY,
    MANIFEST_FORMAT,
    UNREADABLE,
    Deferred,
    LaunchRecord,
    Manifest,
    ProcessRecord,
    RecordError,
    RunEntry,
    RunStatus,
    RunSubmission,
    gc_paused,
)
from deconcnn.runlog.run_status import PROCESS_FILE, RUN_STATUS_FILE, read_checked_status
from deconcnn.sweep.state import read_process

FORMAT1 = Path(__file__).parent / "format1"


def format1_sweep(tmp_path: Path) -> Path:
    """A sweep directory holding the old files: its manifest, and its one run's run.json and process.json."""
    sweep = tmp_path / "tiny"
    run_dir = sweep / "runs" / "S-core_s0"
    run_dir.mkdir(parents=True)
    shutil.copy(FORMAT1 / MANIFEST_FILE, sweep)
    for name in (RUN_STATUS_FILE, PROCESS_FILE):
        shutil.copy(FORMAT1 / name, run_dir)
    (run_dir / "metrics.jsonl").write_bytes(
        b"x" * json.loads((FORMAT1 / RUN_STATUS_FILE).read_text())["metrics_log_bytes"]
    )
    return sweep


SUBMITTED = RunSubmission("s1", "local", 10.0, "local:h:1:2.00:s1-0", None, ("a", "b"), "/logs/a.out")
MANIFEST = Manifest(
    "tiny",
    "/sweeps/tiny.yaml",
    "f" * 16,
    "c" * 16,
    1.0,
    ("S-core",),
    ("seed",),
    {
        "a": RunEntry("a", "S-core", ("seed=0",), {"seed": 0}, 1, (SUBMITTED,)),
        "b": RunEntry("b", "S-core", ("seed=1",), {"seed": 1}, 1, (SUBMITTED,)),
        "c": RunEntry("c", "S-core", ("seed=2",), {"seed": 2}),
    },
    (
        LaunchRecord(
            "s1",
            10.0,
            "local",
            ("a", "b"),
            False,
            "c" * 16,
            deferred=Deferred(1, "MaxSubmitJobs"),
            described={"slots": 2},
        ),
        LaunchRecord("s2", 11.0, "local", (), note="nothing to submit", recovered="from the journal"),
    ),
)


@pytest.mark.parametrize(
    ("record", "parse"),
    [
        (MANIFEST, Manifest.from_json),
        (MANIFEST.runs["a"], lambda data: RunEntry.from_json("a", data)),
        (SUBMITTED, RunSubmission.from_json),
        (MANIFEST.submissions[0], LaunchRecord.from_json),
        (ProcessRecord("h", 12, 3.5, 4.5, "s1"), ProcessRecord.from_json),
        (
            RunStatus("completed", "a", 2, 1.0, 2.0, 40, None, "h", 12, "7_1", "s1", 20, "ckpt", "note", None, 99, "d"),
            RunStatus.from_json,
        ),
    ],
)
def test_every_record_goes_to_json_and_back_unchanged(record, parse):
    data = json.loads(json.dumps(record.to_json()))  # through the text a file holds
    assert parse(data) == record
    assert parse(data).to_json() == data


def test_the_manifest_file_reads_back_as_written_with_a_line_per_run(tmp_path):
    from deconcnn.sweep.sweepdir import SweepDir

    SweepDir(tmp_path).write_manifest(MANIFEST)
    text = (tmp_path / MANIFEST_FILE).read_text()
    assert read_manifest(tmp_path) == MANIFEST
    lines = [line.rstrip(",") for line in text.splitlines()]
    for run_id, entry in MANIFEST.runs.items():  # greppable by run: its whole entry on one line
        assert f"{json.dumps(run_id)}: {json.dumps(entry.to_json())}" in lines


def test_what_a_record_does_not_know_is_kept_as_it_came():
    data = {**RunStatus("running").to_json(), "gpu": "H100"}
    assert RunStatus.from_json(data).extra == {"gpu": "H100"} and RunStatus.from_json(data).to_json() == data
    launch = {**MANIFEST.submissions[0].to_json(), "array_job_ids": ["7"]}  # a backend's own keys
    assert LaunchRecord.from_json(launch).to_json() == launch


def test_files_written_before_format_versions_read_as_version_1(tmp_path):
    sweep = format1_sweep(tmp_path)
    assert FORMAT_KEY not in json.loads((sweep / MANIFEST_FILE).read_text())
    manifest = read_manifest(sweep)
    assert manifest is not None and manifest.format_version == 1 and manifest.sweep == "tiny"
    entry = manifest.runs["S-core_s0"]
    assert entry.attempts == 1 and entry.overrides[-1] == "seed=0" and dict(entry.params) == {"seed": 0}
    [submission] = entry.submissions
    assert submission.executor == "local" and submission.pack == ("S-core_s0",) and submission.handle
    first, again = manifest.submissions
    assert first.described["slots"] == 1 and again.note == "nothing to submit" and again.runs == ()
    run = read_checked_status(sweep / "runs" / "S-core_s0")
    assert run and run.status == "completed" and run.submission_id == submission.id and run.data.startswith("SYNTHETIC")
    process = read_process(sweep / "runs" / "S-core_s0")
    assert process and process.submission_id == submission.id and isinstance(process.pid, int)
    # Written back by this code, each says its version and nothing else changes.
    for old, record in (
        (FORMAT1 / MANIFEST_FILE, manifest),
        (FORMAT1 / RUN_STATUS_FILE, run),
        (FORMAT1 / PROCESS_FILE, process),
    ):
        written = record.to_json()
        assert written.pop(FORMAT_KEY) == 1 and written == json.loads(old.read_text())


def test_status_and_the_analysis_read_an_old_sweep(tmp_path, capsys):
    sweep = format1_sweep(tmp_path)
    assert sweep_cli(["status", str(sweep), "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert run["run_id"] == "S-core_s0" and run["state"] == "completed" and run["attempts"] == 1
    [info] = read_source(sweep).runs
    assert (info.run_id, info.variant, info.state, info.params) == ("S-core_s0", "S-core", "completed", {"seed": 0})


def test_a_newer_format_is_refused_with_a_line_saying_so(tmp_path, capsys):
    sweep = format1_sweep(tmp_path)
    data = {**json.loads((sweep / MANIFEST_FILE).read_text()), FORMAT_KEY: MANIFEST_FORMAT + 1}
    (sweep / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(
        NotASweep,
        match=r"manifest\.json: it is a manifest of format 2, newer than this deconcnn reads \(1\): upgrade deconcnn$",
    ):
        read_manifest(sweep)
    assert sweep_cli(["status", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert "newer than this deconcnn reads" in err and "\n" not in err and "corrupt" not in err
    run_dir = sweep / "runs" / "S-core_s0"
    (run_dir / RUN_STATUS_FILE).write_text(json.dumps({**RunStatus("completed").to_json(), FORMAT_KEY: 2}))
    run = read_checked_status(run_dir)
    assert (
        run and run.status == UNREADABLE and "run status of format 2, newer than this deconcnn reads" in str(run.error)
    )
    with pytest.raises(RecordError, match="process record of format 9"):
        ProcessRecord.from_json({**ProcessRecord("h", 1).to_json(), FORMAT_KEY: 9})


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (lambda m: m["runs"]["a"].update(attempts="1"), "the entry of run a has a malformed attempts count"),
        (lambda m: m["runs"]["a"].update(variant=None), "the entry of run a has no variant"),
        (lambda m: m["runs"]["a"].update(submissions={}), "malformed submissions list"),
        (lambda m: m["runs"]["a"]["submissions"][0].update(pack="a"), "a submission of run a names runs"),
        (lambda m: m["runs"]["a"]["submissions"][0].update(pack=["zz"]), "a submission of run a names runs"),
        (lambda m: m["runs"].update(b=m["runs"]["a"]), "the entry of run b is not a run of that id"),
        (lambda m: m.update(runs=[]), "no 'runs' mapping"),
        (lambda m: m.update(submissions={}), "its 'submissions' is not a list"),
        (lambda m: m.update({FORMAT_KEY: "1"}), "its format_version '1' is not a version number"),
    ],
)
def test_an_ill_typed_manifest_field_is_one_line_naming_the_file(tmp_path, edit, line):
    data = MANIFEST.to_json()
    edit(data)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(NotASweep) as refused:
        read_manifest(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / MANIFEST_FILE} is corrupt (") and line in message and "\n" not in message


def test_the_collector_is_paused_only_in_between_and_left_as_it_was(tmp_path):
    assert gc.isenabled()
    with pytest.raises(NotASweep), gc_paused():
        assert not gc.isenabled()
        (tmp_path / MANIFEST_FILE).write_text("{")
        read_manifest(tmp_path)  # a refusal inside: paused still, then on again
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own pause is not ended by a nested one
    finally:
        gc.enable()


def test_an_ill_typed_run_json_or_process_json_is_not_trusted(tmp_path):
    (tmp_path / RUN_STATUS_FILE).write_text(json.dumps({"status": 3}))
    run = read_checked_status(tmp_path)
    assert run and run.status == UNREADABLE and run.error == "run.json unreadable: not a run status"
    (tmp_path / PROCESS_FILE).write_text(json.dumps({**ProcessRecord("h", 1).to_json(), "pid": "12"}))
    assert read_process(tmp_path) is None  # as a damaged one: the run is judged without it
    with pytest.raises(RecordError, match="its pid '12' or start time None is not a number"):
        ProcessRecord.from_json({"host": "h", "pid": "12"})


def test_a_submission_is_recorded_in_a_new_manifest_never_in_the_one_read():
    again = RunSubmission("s3", "local", 12.0, "h3", None, ("c",), None)
    after = MANIFEST.with_submission(LaunchRecord("s3", 12.0, "local", ("c",)), [(("c",), again)])
    assert after.runs["c"].attempts == 1 and after.runs["c"].last_submission == again
    assert MANIFEST.runs["c"].attempts == 0 and len(MANIFEST.submissions) == 2 and after.recorded("s3")
    with pytest.raises(AttributeError):
        MANIFEST.runs["c"].attempts = 5  # type: ignore[misc]
    assert replace(MANIFEST, sweep="x").sweep == "x" and MANIFEST.sweep == "tiny"
