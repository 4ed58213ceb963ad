"""Bad input to every command: exit 2, one line naming the file, key or value, and the sweep
directory exactly as it was (nothing written, nothing submitted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deconcnn.backends.slurm import cli as slurm_cli
from deconcnn.cli import run as sweep_cli
from sweeps import LOCAL_SLURM, launch_json, refused, write_sweep


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, Path]:
    """A finished local sweep to corrupt copies of."""
    root = tmp_path_factory.mktemp("bad")
    sweep_file = write_sweep(root / "tiny.yaml", seeds="0")
    assert launch_json(sweep_file, "--executor", "local", "--out", root / "out") == 0
    return sweep_file, root / "out"


LAUNCHER_CASES = [
    (["hydra.launcher.partiton=gpu"], "Key 'partiton' not in 'SlurmQueueConf'"),
    (["hydra.launcher.timeout_min=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    (["hydra.launcher.timeout_min=1"], "timeout_min=1 is too short for signal_delay_s=120"),
    (["hydra.launcher.comment=a\nb"], "hydra.launcher.comment: control character"),
    (["+hydra.launcher.additional_parameters.mail-type=END\nrm -rf ~"], "control character"),
    (["hydra.launcher.tasks_per_node=2"], "hydra.launcher.tasks_per_node must be 1"),
    (["hydra.launcher.mem_gb=0"], "hydra.launcher.mem_gb must be >= 1"),
    (["hydra/launcher=submitit_local"], "is not a SLURM launcher"),
]


@pytest.mark.parametrize(("overrides", "expected"), LAUNCHER_CASES)
def test_launcher_values_are_checked_before_sbatch_even_in_a_dry_run(tmp_path, capsys, overrides, expected):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    refused(
        capsys,
        ["launch", sweep_file, "--executor", "local", "--out", tmp_path / "out", "--dry-run", *overrides],
        tmp_path / "out",
        expected,
    )


def test_a_plus_launcher_override_goes_to_the_launcher_not_to_the_runs(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml", seeds="0")
    capsys.readouterr()
    assert (
        sweep_cli(
            [
                "launch",
                str(sweep_file),
                "--executor",
                "local",
                "--out",
                str(tmp_path),
                "--dry-run",
                "--json",
                "+hydra.launcher.additional_parameters.comment=x",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert not any("hydra.launcher" in o for row in rows for o in row["overrides"])


def test_duplicate_variant_is_named(tmp_path, capsys):
    sweep_file = tmp_path / "dup.yaml"
    sweep_file.write_text(
        "name: dup\naxes: {seed: 0}\nvariants:\n  S-core: {experiment: loss_lin_slope_base}\n"
        "  S-core: {experiment: loss_lin_slope_adamw}\n"
    )
    refused(
        capsys,
        ["launch", sweep_file, "--out", tmp_path / "out"],
        tmp_path / "out",
        "found duplicate key S-core (line 5, column 3)",
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--parallel", "-3"], "--parallel must be >= 1, got -3"),
        (["--workers-per-gpu", "0"], "--workers-per-gpu must be >= 1, got 0"),
        (["--grace", "-1"], "--grace must be >= 0"),
        (["--json"], "--json goes with --dry-run"),
    ],
)
def test_launch_options_are_checked_before_anything_is_recorded(launched, capsys, option, expected):
    sweep_file, out = launched
    refused(capsys, ["launch", sweep_file, "--executor", "local", "--out", out, *option], out, expected)


@pytest.mark.slow
def test_check_with_a_bad_workers_per_gpu_trains_nothing(launched, capsys):
    sweep_file, out = launched
    refused(
        capsys,
        ["check", sweep_file, "--executor", "local", "--out", out, "--workers-per-gpu", "-2"],
        out,
        "--workers-per-gpu must be >= 1, got -2",
    )


def test_status_of_a_file_or_a_directory_without_a_sweep(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    refused(capsys, ["status", a_file], tmp_path, "is a file, not a sweep directory")
    refused(capsys, ["status", tmp_path], tmp_path, "not a sweep directory")
    refused(capsys, ["cancel", tmp_path], tmp_path, "not a sweep directory")


@pytest.mark.parametrize("command", ["collect", "report"])
def test_collect_and_report_of_a_directory_that_holds_no_sweep(tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("not a sweep")
    refused(capsys, [command, tmp_path], tmp_path, "is not a sweep directory")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["launch", "status", "cancel", "collect", "report"])
def test_a_corrupt_manifest_is_one_line_in_every_command(launched, tmp_path, capsys, command):
    sweep_file, out = launched
    copy = tmp_path / "out"
    for path in sorted(out.rglob("*")):
        target = copy / path.relative_to(out)
        target.mkdir(parents=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    manifest = copy / "tiny" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    argv = {"launch": ["launch", sweep_file, "--executor", "local", "--out", copy]}.get(
        command, [command, copy / "tiny"]
    )
    refused(capsys, argv, copy, "manifest.json is corrupt")


@pytest.mark.slow
def test_cancel_only_a_pattern_that_matches_nothing(launched, capsys):
    _, out = launched
    refused(capsys, ["cancel", out / "tiny", "--only", "S-nope"], out, "--only 'S-nope' matches no run")


# ---------------------------------------------------------------- what only the cluster can say


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["hydra.launcher.cpus_per_task=64"], "asks 64 CPUs"),
        (["hydra.launcher.mem_gb=999999"], "mem_gb=999999"),
        (["hydra.launcher.gpus_per_node=8"], "gpus_per_node=8"),
        (["hydra.launcher.partition=nosuchpart"], "hydra.launcher.partition=nosuchpart: sinfo lists no such partition"),
    ],
)
def test_a_request_no_node_can_hold_is_refused_with_the_numbers(tmp_path, capsys, overrides, expected):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    settings = [o for o in LOCAL_SLURM if o.split("=")[0] not in {x.split("=")[0] for x in overrides}]
    refused(
        capsys,
        ["launch", sweep_file, "--executor", "slurm", "--skip-check", "--out", tmp_path / "out", *settings, *overrides],
        tmp_path / "out",
        expected,
    )


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_sbatch_s_own_refusal_is_one_line_and_nothing_is_recorded(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    before = slurm_cli.squeue_states(["1"])  # nothing of ours queued before or after
    refused(
        capsys,
        [
            "launch",
            sweep_file,
            "--executor",
            "slurm",
            "--skip-check",
            "--out",
            tmp_path / "out",
            *LOCAL_SLURM,
            "hydra.launcher.constraint=nosuchfeature",
        ],
        tmp_path / "out",
        "sbatch: error: Batch job submission failed: Invalid feature specification",
    )
    assert slurm_cli.squeue_states(["1"]) == before
