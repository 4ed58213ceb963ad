"""Sweep files expand through Hydra's sweeper into exactly the intended, validated runs."""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from deconcnn.cli import run as sweep_cli
from deconcnn.runconfig import CONF_DIR, compose_run_config
from deconcnn.sweep.grid import SweepFileError, axis_values, load_sweep, validate_runs

REPO = CONF_DIR.parent
LOSS_LIN_SLOPE = REPO / "sweeps" / "loss_lin_slope.yaml"
VARIANTS = {"S-core", "S-adamw", "S-bn-off", "S-narrow"}


def test_dry_run_json_lists_the_216_run_grid(capsys):
    assert (
        sweep_cli(
            ["launch", str(LOSS_LIN_SLOPE), "--executor", "local", "--dry-run", "--json", "--out", "/nonexistent"]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 216 and len({r["run_id"] for r in rows}) == 216
    assert len({r["dir"] for r in rows}) == 216
    assert Counter(r["variant"] for r in rows) == dict.fromkeys(VARIANTS, 54)
    for variant in VARIANTS:
        grid = set()
        for r in rows:
            if r["variant"] == variant:
                values = dict(o.split("=", 1) for o in r["overrides"])
                grid.add((float(values["optim.lr"]), float(values["optim.weight_decay"]), int(values["seed"])))
        assert grid == set(itertools.product((0.05, 0.1, 0.2), (1e-4, 1e-3, 1e-2), range(6)))
    core = next(r for r in rows if r["run_id"] == "S-core_lr0.1_wd0.001_s3")
    assert core["dir"] == "/nonexistent/loss_lin_slope/runs/S-core_lr0.1_wd0.001_s3"
    assert not Path("/nonexistent").exists()  # a dry run writes nothing


def test_a_variant_carries_its_own_axis_values():
    sweep = load_sweep(REPO / "sweeps" / "demo.yaml")
    lrs = {
        r.variant: sorted(r.params["optim.lr"] for r in sweep.runs if r.variant == v)
        for v in ("S-core", "S-adamw")
        for r in sweep.runs
        if r.variant == v
    }
    assert lrs == {"S-core": [0.05, 0.1], "S-adamw": [0.001, 0.003]}


@pytest.mark.parametrize(
    "axes",
    [
        ["optim.lr=0.05,0.1,0.2", "optim.weight_decay=1e-4,1e-3,1e-2", "seed=range(0,6)"],
        [
            "+x=range(0.5,2,0.5)",
            "y='a b',\"c,d\",e",
            "z=choice(true,[1,2],{k:v},1e-3)",
            "w=7",
            "v=shuffle(1,2,3)",
            "u='p q'",
        ],
        ["m=interval(0,1)"],
    ],
)
def test_each_run_s_swept_values_are_what_hydra_parses_of_its_lines(axes):
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(axes)
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):  # the sweeper refuses it
        with pytest.raises(HydraException):
            BasicSweeper.split_arguments(parsed, None)
        return
    typed = axis_values(parsed)
    for combo in BasicSweeper.split_arguments(parsed, None)[0]:
        expected = {o.key_or_group: o.value() for o in parser.parse_overrides(combo)}
        got = dict(typed[line] for line in combo)
        assert got == expected and [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_every_demo_run_validates():
    validate_runs(load_sweep(REPO / "sweeps" / "demo.yaml").runs)


def _sweep_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\nvariants: [a, b\n", "not valid YAML"),
        ("name: x\naxes: {seed: 0}\n", "'variants' must map"),
        ("name: x\nvariants: {S-core: {experiment: loss_lin_slope_base}}\nbogus: 1\n", "unknown top-level keys"),
        (  # a number as a key used to end in a TypeError: it does not sort with the strings
            "name: x\nvariants: {S-core: {experiment: loss_lin_slope_base}}\nbogus: 1\n2: two\n",
            r"unknown top-level keys \['2', 'bogus'\]",
        ),
        ("name: x\naxes: {seed: 'range(0,'}\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n", "bad axis"),
        (
            "name: x\nrun_id: '{variant}'\naxes: {seed: '0,1'}\n"
            "variants: {S-core: {experiment: loss_lin_slope_base}}\n",
            "two runs get the id S-core",
        ),
    ],
)
def test_malformed_sweep_files_are_refused(tmp_path, body, message):
    with pytest.raises(SweepFileError, match=message):
        load_sweep(_sweep_file(tmp_path, body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("variants: {S-x: {experiment: no_such_variant}}\n", "Could not find 'experiment/no_such_variant'"),
        (
            "axes: {optim.lr: 'abc,0.1'}\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n",
            "optim.lr must be a number, got 'abc'",
        ),
        ("axes: {optim.lr: '-0.1'}\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n", "optim.lr must be > 0"),
        (
            "axes: {optim.lrr: '0.1'}\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n",
            "Could not override 'optim.lrr': Key 'lrr' is not in struct (to append to your config use +optim.lrr=0.1)",
        ),
    ],
)
def test_invalid_runs_fail_validation_naming_the_run(tmp_path, body, message):
    sweep = load_sweep(_sweep_file(tmp_path, "name: x\n" + body))
    with pytest.raises(SweepFileError, match="run S-") as error:
        validate_runs(sweep.runs)
    assert message in str(error.value)


@pytest.mark.slow
def test_a_sweep_training_cifar_variants_on_synthetic_data_says_so(capsys):
    assert (
        sweep_cli(
            [
                "launch",
                str(LOSS_LIN_SLOPE.parent / "demo.yaml"),
                "--executor",
                "local",
                "--dry-run",
                "--out",
                "/nonexistent",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    for variant in VARIANTS:
        assert (f"note: {variant}: its runs train on SyntheticSource, although its experiment (loss_lin_slope_") in err
    assert (
        sweep_cli(
            ["launch", str(LOSS_LIN_SLOPE), "--executor", "local", "--dry-run", "--json", "--out", "/nonexistent"]
        )
        == 0
    )
    assert "note:" not in capsys.readouterr().err  # the real sweep trains on what its experiments name


def test_a_sweep_picks_its_loggers_and_names_itself_to_them(tmp_path):
    body = (
        "name: logged\noverrides: ['logger=[csv,tensorboard]']\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n"
    )
    sweep = load_sweep(_sweep_file(tmp_path, body))
    validate_runs(sweep.runs)
    (run,) = sweep.runs
    args = run.command(tmp_path / run.run_id, sweep=sweep.name).args
    cfg = compose_run_config([a for a in args if not a.startswith("hydra.")])
    assert list(cfg.logger) == ["csv", "tensorboard"] and cfg.sweep == "logged" and cfg.run_id == run.run_id


def test_a_logger_whose_package_is_missing_is_refused_at_launch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without it gives `import`
    body = "name: logged\noverrides: [logger=mlflow]\nvariants: {S-core: {experiment: loss_lin_slope_base}}\n"
    sweep = load_sweep(_sweep_file(tmp_path, body))
    with pytest.raises(SweepFileError) as error:
        validate_runs(sweep.runs)
    assert str(error.value).endswith(": logger.mlflow needs the mlflow package: pip install 'deconcnn[mlflow]'")


def _big_grid(tmp_path: Path, seeds: list[int]) -> Path:
    """A 600-run variant whose runs all pass, and one whose seed axis lists `seeds`."""
    return _sweep_file(
        tmp_path,
        "name: big\nrun_id: '{variant}_lr{optim.lr}_s{seed}'\nvariants:\n"
        "  S-core: {experiment: loss_lin_slope_base, axes: {optim.lr: '0.05,0.1,0.2', seed: 'range(0,200)'}}\n"
        f"  S-adamw: {{experiment: loss_lin_slope_adamw, axes: {{optim.lr: '0.001', seed: {json.dumps(seeds)}}}}}\n",
    )


@pytest.mark.parametrize("where", [0, 150, 299])
def test_one_bad_value_in_one_run_of_a_large_grid_is_reported(tmp_path, where):
    """Runs of one shape share their check (deconcnn.sweep.shapes); the one bad run still fails."""
    seeds = list(range(300))
    seeds[where] = -1
    with pytest.raises(SweepFileError) as error:
        validate_runs(load_sweep(_big_grid(tmp_path, seeds)).runs)
    assert str(error.value) == "run S-adamw_lr0.001_s-1: seed must be an integer from 0 to 4294967295, got -1"


def test_a_large_grid_is_checked_in_full_once_per_shape(tmp_path, monkeypatch):
    from deconcnn.sweep import grid

    full = []
    monkeypatch.setattr(grid, "data_target", lambda cfg: full.append(cfg.variant) or "data")
    sources = validate_runs(load_sweep(_big_grid(tmp_path, list(range(300)))).runs)
    assert len(sources) == 900 and sorted(full) == ["S-adamw", "S-core"]


@pytest.mark.parametrize(
    ("override", "axes", "message"),
    [
        # An alias of the swept key: a rule that reads it sees each run's value.
        ("trainer.max_epochs=${seed}", "", "trainer.max_epochs must be an integer >= 1, got 0"),
        # Another interpolation reads a swept value: its runs are checked one by one.
        (
            "+picked='${optim.${data.source.data_dir}}'",
            ", data.source.data_dir: 'lr,nope'",
            "Interpolation key 'optim.nope' not found",
        ),
    ],
)
def test_a_value_read_through_an_interpolation_is_checked_in_each_run(tmp_path, override, axes, message):
    body = (
        "name: big\nvariants:\n"
        f"  S-adamw: {{experiment: loss_lin_slope_adamw, axes: {{seed: {json.dumps([*range(1, 200), 0])}{axes}}}}}\n"
    )
    with pytest.raises(SweepFileError, match="run S-adamw_seed") as error:
        validate_runs(load_sweep(_sweep_file(tmp_path, body), [override]).runs)
    assert message in str(error.value)
