"""No unbounded input: a grid is counted before it is listed, a sweep file's YAML is bounded in
size and alias expansion, and every number (config or command line) is checked, each refusal in
one line with nothing written."""

from __future__ import annotations

import re

import pytest
from fake_sweep import make_sweep

from deconcnn.sweep.grid import SweepFileError, load_sweep, validate_runs
from deconcnn.sweep.limits import MAX_SWEEP_FILE_BYTES, MAX_YAML_NODES
from sweeps import refused, write_sweep

VARIANT = "variants: {S-core: {experiment: loss_lin_slope_base}}\n"


def _file(tmp_path, body: str, name: str = "big.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ("{seed: 'range(0,1000000000)'}", "1,000,000,000 runs (variant S-core: 1,000,000,000)"),
        ("{seed: 'range(0,1e9)'}", "1,000,000,000 runs (variant S-core: 1,000,000,000)"),
        (
            "{seed: 'range(0,100)', +a: 'range(0,100)', +b: 'range(0,100)'}",
            "1,000,000 runs (variant S-core: 1,000,000)",
        ),
    ],
)
def test_a_grid_too_big_is_refused_with_its_size_before_it_is_listed(tmp_path, capsys, axes, expected):
    sweep_file = _file(tmp_path, f"name: big\naxes: {axes}\n{VARIANT}")
    argv = ["launch", sweep_file, "--executor", "local", "--out", tmp_path / "out", "--dry-run"]
    refused(capsys, argv, tmp_path, f"{expected}, more than --max-runs 100,000")


@pytest.mark.parametrize(
    "axes",
    [
        "{seed: 'range(0,6)'}",
        "{seed: 'range(10,0,-3)'}",
        "{seed: 'choice(0,1,2)', optim.lr: '0.05,0.1'}",
        "{optim.lr: 'range(0.05,0.2,0.05)'}",
        "{optim.lr: 'range(0.1,1.0,0.1)', seed: 'range(0,3)'}",
        "{optim.lr: 'range(1,0,-0.25)'}",
        "{}",
    ],
)
def test_the_counted_size_is_the_number_of_runs_listed(tmp_path, axes):
    body = (
        f"name: g\naxes: {axes}\nvariants:\n  S-core: {{experiment: loss_lin_slope_base}}\n"
        "  S-two: {experiment: loss_lin_slope_base, axes: {optim.weight_decay: '0.1,0.2,0.3'}}\n"
    )
    n = len(load_sweep(_file(tmp_path, body)).runs)
    assert len(load_sweep(_file(tmp_path, body), max_runs=n).runs) == n
    with pytest.raises(SweepFileError, match=f"{n:,} runs .* more than --max-runs {n - 1:,}"):
        load_sweep(_file(tmp_path, body), max_runs=n - 1)


@pytest.mark.parametrize(
    ("axes", "expected"),
    [("{seed: 'range(0,10,0)'}", "step must not be 0"), ("{seed: 'range(5,0)'}", "seed=range(5,0): no values")],
)
def test_an_axis_without_values_is_refused(tmp_path, axes, expected):
    with pytest.raises(SweepFileError, match=re.escape(expected)):
        load_sweep(_file(tmp_path, f"name: g\naxes: {axes}\n{VARIANT}"))


def _alias_bomb(levels: int) -> str:
    lines = ["name: bomb", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + VARIANT


def test_an_alias_bomb_is_refused_with_its_size(tmp_path, capsys):
    sweep_file = _file(tmp_path, _alias_bomb(10))  # 9^10 strings once expanded
    lists = [10]  # nodes of l0 (the list and its 9 strings), then of each list of 9 aliases of the last
    for _ in range(9):
        lists.append(1 + 9 * lists[-1])
    nodes = 1 + 2 + sum(1 + n for n in lists) + 6  # the document, name: bomb, l0..l9, the variants
    argv = ["launch", sweep_file, "--executor", "local", "--out", tmp_path / "out", "--dry-run"]
    refused(capsys, argv, tmp_path, f"its aliases expand to {nodes:,} YAML nodes (more than {MAX_YAML_NODES:,})")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a: &a [1, *a]\n", "a recursive alias (line 1)"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        (f"name: x\n{VARIANT}# {'x' * MAX_SWEEP_FILE_BYTES}\n", "larger than 1 MiB"),
        (b"name: \xff\n", "not UTF-8"),
    ],
)
def test_unbounded_or_broken_yaml_is_refused(tmp_path, body, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(SweepFileError, match=re.escape(expected)):
        load_sweep(path)


def test_aliases_of_a_normal_sweep_file_still_work(tmp_path):
    body = "name: a\naxes: {seed: '0,1'}\nvariants:\n  S-core: &v {experiment: loss_lin_slope_base}\n  S-two: *v\n"
    assert len(load_sweep(_file(tmp_path, body)).runs) == 4


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ("{optim.lr: inf}", "optim.lr must be > 0, got inf"),
        ("{optim.lr: nan}", "optim.lr must be > 0, got nan"),
        ("{optim.weight_decay: inf}", "optim.weight_decay must be >= 0, got inf"),
        ("{seed: -1}", "seed must be an integer from 0 to 4294967295, got -1"),
        ("{seed: 4294967296}", "seed must be an integer from 0 to 4294967295, got 4.29497e+09"),
        ("{seed: 1.5}", "seed must be an integer from 0 to 4294967295, got 1.5"),
    ],
)
def test_config_numbers_are_checked(tmp_path, axes, expected):
    sweep = load_sweep(_file(tmp_path, f"name: n\naxes: {axes}\n{VARIANT}"))
    with pytest.raises(SweepFileError, match="run S-core") as error:
        validate_runs(sweep.runs)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--workers-per-gpu", "abc"], "argument --workers-per-gpu: invalid int value: 'abc'"),
        (["--parallel", "1.5"], "argument --parallel: invalid int value: '1.5'"),
        (["--max-runs", "many"], "argument --max-runs: invalid int value: 'many'"),
        (["--grace", "nan"], "--grace must be >= 0 and finite, got nan"),
        (["--grace", "inf"], "--grace must be >= 0 and finite, got inf"),
        (["--grace", "soon"], "argument --grace: invalid float value: 'soon'"),
        (["--max-runs", "1"], "2 runs (variant S-core: 2), more than --max-runs 1"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_launch_numbers_are_one_line(tmp_path, capsys, option, expected):
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    refused(
        capsys, ["launch", sweep_file, "--executor", "local", "--out", tmp_path / "out", *option], tmp_path, expected
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "{sweep}", "--watch", "nan"], "--watch must be a number of seconds > 0, got nan"),
        (["status", "{sweep}", "--watch", "-1"], "--watch must be a number of seconds > 0, got -1"),
        (["status", "{sweep}", "--watch", "often"], "argument --watch: invalid float value: 'often'"),
        (["cancel", "{sweep}", "--grace", "nan"], "--grace must be >= 0 and finite, got nan"),
        (["analyze", "{sweep}", "--workers", "x"], "argument --workers: invalid int value: 'x'"),
        (["probe-resources", "{file}", "--out", "{out}", "--steps", "x"], "argument --steps: invalid int value: 'x'"),
        (["check", "{file}", "--out", "{out}", "--max-runs", "1"], "more than --max-runs 1"),
        (["lanch", "{file}"], "argument COMMAND: invalid choice: 'lanch'"),
    ],
)
def test_every_command_s_numbers_are_one_line(tmp_path, capsys, argv, expected):
    sweep = make_sweep(tmp_path / "fake", variants=("S-core",), lrs=(0.1,), seeds=(0,), epochs=1).path
    sweep_file = write_sweep(tmp_path / "tiny.yaml")
    argv = [a.format(sweep=sweep, file=sweep_file, out=tmp_path / "out") for a in argv]
    refused(capsys, argv, tmp_path, expected)
