"""Nothing is written (or read) outside OUT/<sweep>/runs: every way the issue found a real local
launch writing process.json, run.json, .hydra and stdout.log outside is refused in one line, and
the whole tree around the sweep is left exactly as it was."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from fake_sweep import make_sweep

from deconcnn.backends import Command, Submission
from deconcnn.backends.runner import run_pack
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.layout import UnsafeRunDir, run_id_problem, run_ids_problem
from deconcnn.sweep.grid import load_sweep
from deconcnn.sweep.launch import new_manifest
from deconcnn.sweep.sweepdir import SweepDir
from sweeps import refused, status_of, write_sweep

LOCAL = ("--executor", "local")


def _sweep(path: Path, run_id: str) -> Path:
    path.write_text(
        f"name: esc\nrun_id: {json.dumps(run_id)}\noverrides: [debug=smoke]\naxes: {{seed: '0,1'}}\n"
        "variants: {S-core: {experiment: loss_lin_slope_base}}\n"
    )
    return path


@pytest.mark.parametrize(
    "template",
    [
        "../../../X_{variant}_s{seed}",
        "{variant}/../../../X_s{seed}",
        "ABSOLUTE/X_{variant}_s{seed}",
        ".hidden_{variant}_s{seed}",
        "{variant}\t_s{seed}",
        "{variant}\n_s{seed}",
    ],
)
def test_a_run_id_template_that_leaves_runs_is_refused_by_a_real_launch(tmp_path, capsys, template):
    work = tmp_path / "a" / "b" / "c"  # ../../../ from OUT/<sweep>/runs lands in tmp_path
    work.mkdir(parents=True)
    sweep_file = _sweep(work / "esc.yaml", template.replace("ABSOLUTE", str(tmp_path / "abs")))
    refused(
        capsys, ["launch", sweep_file, *LOCAL, "--out", work / "out"], tmp_path, "cannot name a directory under runs/"
    )


def test_an_axis_value_with_a_path_in_it_is_refused_with_the_default_run_id(tmp_path, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    sweep_file = work / "esc.yaml"
    sweep_file.write_text(
        "name: esc\noverrides: [debug=smoke]\naxes: {seed: 0, +note: '../../../../X'}\n"
        "variants: {S-core: {experiment: loss_lin_slope_base}}\n"
    )
    refused(capsys, ["launch", sweep_file, *LOCAL, "--out", work / "out"], tmp_path, "run id 'S-core_seed0_note../")


@pytest.mark.parametrize(
    "override", ["hydra.run.dir=/tmp/elsewhere", "run_dir=/tmp/elsewhere", "hydra.output_subdir=../../x"]
)
def test_overrides_that_place_a_run_s_files_are_refused(tmp_path, capsys, override):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    refused(
        capsys,
        ["launch", sweep_file, *LOCAL, "--out", tmp_path / "out", override],
        tmp_path,
        f"{override.split('=')[0]} is set by deconcnn-sweep",
    )


def test_a_symlinked_run_directory_is_refused_by_launch_only(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    outside = tmp_path / "outside"
    outside.mkdir()
    runs = tmp_path / "out" / "tiny" / "runs"
    runs.mkdir(parents=True)
    (runs / "S-core_s1").symlink_to(outside)
    for only in (["--only", "S-core_s1"], []):
        refused(
            capsys, ["launch", sweep_file, *LOCAL, "--out", tmp_path / "out", *only], tmp_path, "is a symbolic link"
        )
    assert not any(outside.iterdir())


def test_a_pack_runner_starts_no_run_whose_directory_became_a_link(tmp_path, capsys):
    """A link made after launch checked (a SLURM task can pend for hours): nothing runs or lands there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "S-core_s0").symlink_to(outside)
    command = Command("S-core_s0", "deconcnn.train", (), str(tmp_path / "S-core_s0"))
    assert run_pack([command], Submission("sub", "test")) == {}
    assert not any(outside.iterdir())
    assert "S-core_s0: not started" in capsys.readouterr().err


@pytest.fixture
def fake(tmp_path) -> Path:
    """A finished sweep directory of two runs, as launch and the trainer write them."""
    return make_sweep(tmp_path / "fake", variants=("S-core",), lrs=(0.1,), seeds=(0, 1), epochs=1).path


def test_a_symlinked_run_directory_is_flagged_by_status_and_not_read_through(fake, tmp_path, capsys):
    """A link to another run's files must not pass for this run's own (completed, collected)."""
    first, second = sorted(p.name for p in (fake / "runs").iterdir())
    (fake / "runs" / first).rename(tmp_path / "moved")
    (fake / "runs" / first).symlink_to(tmp_path / "moved")
    runs = {r["run_id"]: r for r in status_of(fake, capsys)["runs"]}
    assert runs[second]["state"] == "completed"
    assert runs[first]["state"] == "failed" and "is a symbolic link" in runs[first]["reason"]
    (fake / "runs" / "S-core_unlisted").symlink_to(tmp_path / "moved")
    capsys.readouterr()
    assert sweep_cli(["collect", str(fake), "--format", "csv"]) == 0
    with open(fake / "collected" / "runs.csv") as table:
        rows = {row["run_id"]: row for row in csv.DictReader(table)}
    assert set(rows) == {first, second}  # the unlisted link is not a run of the sweep
    assert (rows[first]["has_dir"], rows[second]["has_dir"]) == ("false", "true")


@pytest.mark.parametrize("command", ["status", "collect", "report", "cancel"])
@pytest.mark.parametrize("key", ["../../../X", "/abs/X", ".hidden", "S-core/../../X"])
def test_a_manifest_run_key_edited_to_leave_runs_is_refused_by_every_command(fake, tmp_path, capsys, command, key):
    manifest_path = fake / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first = sorted(manifest["runs"])[0]
    manifest["runs"][key] = {**manifest["runs"].pop(first), "run_id": key}
    manifest_path.write_text(json.dumps(manifest))
    # Where the edited key points, a copy of a finished run: it must be neither read nor collected.
    planted = fake / "runs" / key if not key.startswith("/") else tmp_path / "abs" / "X"
    shutil.copytree(fake / "runs" / first, planted.resolve(), dirs_exist_ok=True)
    refused(capsys, [command, fake], tmp_path, "manifest.json is corrupt (run id")


def test_a_manifest_key_edited_to_leave_runs_refuses_a_relaunch(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    sweep_dir = SweepDir(tmp_path / "out" / "tiny")
    sweep_dir.path.mkdir(parents=True)
    manifest = new_manifest(load_sweep(sweep_file), "code").to_json()
    manifest["runs"]["../../X"] = manifest["runs"].pop("S-core_s0")
    sweep_dir.manifest_path.write_text(json.dumps(manifest))
    refused(capsys, ["launch", sweep_file, *LOCAL, "--out", tmp_path / "out"], tmp_path, "manifest.json is corrupt")


def test_a_manifest_pack_naming_an_unknown_run_is_refused(fake, tmp_path, capsys):
    manifest_path = fake / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["runs"][sorted(manifest["runs"])[0]]
    entry["submissions"][-1]["pack"] = ["../../X"]
    manifest_path.write_text(json.dumps(manifest))
    refused(capsys, ["cancel", fake], tmp_path, "names runs the manifest does not hold")


def test_run_dir_refuses_every_id_that_is_not_one_plain_directory_name(tmp_path):
    sweep_dir = SweepDir(tmp_path / "sweep")
    for good in ("S-core_lr0.1_wd0.0001_s3", "a.b", "a-b_c", "\u00fc", "x" * 255):
        assert run_id_problem(good) is None
        assert sweep_dir.run_dir(good).parent == sweep_dir.runs_dir
    # '..' anywhere is refused ("a..b" is harmless): one simple rule, stated in the message.
    for bad in ("", ".", "..", ".x", "a/b", "/abs", "a\\b", "a..b", "a\x00b", "a\x1bb", "x" * 256, "\u00fc" * 128, 3):
        assert run_id_problem(bad), bad
        with pytest.raises(UnsafeRunDir, match="run id"):
            sweep_dir.run_dir(bad)  # type: ignore[arg-type]
    # A manifest's keys in one pass: the first bad one's problem, wherever it sits among good ones.
    goods = [f"S-core_lr0.1_wd0.0001_s{seed}" for seed in range(1000)] + ["\u00fc", "x" * 255]
    assert run_ids_problem(goods) is None and run_ids_problem([]) is None
    for bad in ("", ".x", "a/b", "a..b", "a\x1bb", "x" * 256, "\u00fc" * 128):
        assert run_ids_problem([*goods[:500], bad, *goods[500:], "/abs"]) == run_id_problem(bad), bad


def test_a_symlinked_runs_folder_is_allowed(fake, tmp_path, capsys):
    """runs/ itself may live elsewhere (scratch space) behind a link; only what it holds may not be links."""
    (fake / "runs").rename(tmp_path / "scratch")
    (fake / "runs").symlink_to(tmp_path / "scratch")
    assert {r["state"] for r in status_of(fake, capsys)["runs"]} == {"completed"}
    capsys.readouterr()
    assert sweep_cli(["collect", str(fake)]) == 0
