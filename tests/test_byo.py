"""Bring your own model and data (docs/byo.md), end to end as a user runs it: the example
directory copied, `deconcnn-train -m --config-dir` in it, then status / cancel / report on that
multirun directory, a sweep launched with `--config-dir`, and the one-line refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deconcnn.cli import run as sweep_cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "byo"
FILE_BLOCK = re.compile(r"```\w+ myproject/(\S+)\n(.*?)```", re.DOTALL)
BIN = Path(sys.executable).parent


def run_in(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command started in the project directory, with no PYTHONPATH: the runs import `mypkg`
    from the directory they start in."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("byo") / "myproject"))


@pytest.fixture(scope="module")
def multirun(project) -> Path:
    """`deconcnn-train -m` of the user's experiment at two learning rates."""
    result = run_in(
        project,
        "deconcnn-train",
        "-m",
        "--config-dir",
        "conf",
        "experiment=blobs_mlp",
        "optim.lr=0.05,0.2",
        "trainer.max_epochs=2",
        "hydra.sweep.dir=multirun",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return project / "multirun"


@pytest.fixture
def importable(project, monkeypatch):
    """This process in the project directory, as `deconcnn-sweep` started there; `mypkg` forgotten after."""
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    yield project
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)


def test_the_page_shows_the_example_files_as_they_are():
    shown = dict(FILE_BLOCK.findall((REPO / "docs" / "byo.md").read_text()))
    files = {p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*") if p.is_file() and p.name != "__init__.py"}
    assert set(shown) == files
    for name, text in shown.items():
        assert (EXAMPLE / name).read_text() == text, name


def test_the_user_s_model_trains_on_the_user_s_data_with_every_monitor(multirun):
    for job in ("0", "1"):
        run = json.loads((multirun / job / "run.json").read_text())
        assert run["status"] == "completed" and run["data"] == "mypkg.data.BlobsDataModule"
        kinds = [json.loads(line)["kind"] for line in (multirun / job / "metrics.jsonl").read_text().splitlines()]
        # 2 epochs of 12 steps: a train record per step, validation per epoch, curvature every 12 steps
        assert kinds.count("train") == 24 and kinds.count("val") == 2
        assert kinds.count("curvature") == 2 and kinds.count("noise") == 2


def test_status_of_a_multirun_directory(multirun, capsys):
    assert sweep_cli(["status", str(multirun), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["variant"], r["state"]) for r in status["runs"]] == [
        ("0", "mlp", "completed"),
        ("1", "mlp", "completed"),
    ]
    assert status["final"] and status["counts"]["mlp"]["completed"] == 2
    assert sweep_cli(["status", str(multirun)]) == 0
    assert "completed" in capsys.readouterr().out


def test_a_multirun_job_is_read_from_its_run_json(multirun, tmp_path, capsys):
    copy = Path(shutil.copytree(multirun, tmp_path / "multirun"))
    run = json.loads((copy / "1" / "run.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (copy / "1" / "run.json").write_text(json.dumps({**run, "status": "running", "pid": int(dead.stdout)}))
    (copy / "0" / "run.json").unlink()
    assert sweep_cli(["status", str(copy), "--json"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs["0"]["state"] == "missing" and "no run.json" in runs["0"]["reason"]
    assert runs["1"]["state"] == "failed" and "is gone but run.json says running" in runs["1"]["reason"]


def test_cancel_of_a_multirun_directory_says_why_not_in_one_line(multirun, capsys):
    assert sweep_cli(["cancel", str(multirun)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is a Hydra multirun directory: its runs were started by `deconcnn-train -m`, not by deconcnn-sweep" in err


def test_report_of_a_multirun_directory(multirun, capsys):
    assert sweep_cli(["report", str(multirun)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {multirun / 'report' / 'index.html'}"
    page = (multirun / "report" / "index.html").read_text()
    assert "mlp" in page and "optim.lr" in page


@pytest.mark.slow  # a real local launch: ~30 s here
def test_a_sweep_of_the_user_s_model_launched_with_config_dir(importable, capsys):
    argv = ["launch", "blobs.yaml", "--config-dir", "conf", "--executor", "local", "--out", "results"]
    assert sweep_cli([*argv, "--only", "mlp-wide_lr0.2", "trainer.max_epochs=1"]) == 0
    assert "[1/1] mlp-wide_lr0.2: completed" in capsys.readouterr().out
    run_dir = importable / "results" / "blobs" / "runs" / "mlp-wide_lr0.2"
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "_target_: mypkg.models.MLP" in config and "hidden: 128" in config


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=mlpp"], "Could not find 'model/mlpp' (available options in 'model': mlp, resnet18)"),
        (["model._target_=mypkg.Net"], "model._target_=mypkg.Net: cannot import it: "),
        (["data._target_=nopkg.Data"], "data._target_=nopkg.Data: cannot import it: No module named 'nopkg'"),
        (["+model.depth=3"], "model.depth: mypkg.models.MLP takes no argument 'depth' (it takes: dim, hidden, "),
    ],
)
def test_a_dry_run_refuses_what_the_runs_would_fail_on(importable, capsys, overrides, expected):
    argv = ["launch", "blobs.yaml", "--config-dir", "conf", "--executor", "local", "--out", "dry", "--dry-run"]
    assert sweep_cli([*argv, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deconcnn-sweep: error: run mlp_lr0.05: ") and expected in err, err
    assert not (importable / "dry").exists()


def test_a_variant_that_narrows_the_resnet_is_refused_on_a_model_without_width(importable, capsys):
    (importable / "narrow.yaml").write_text(
        "name: narrow\nvariants:\n  S-narrow:\n    experiment: loss_lin_slope_narrow\n"
        "    overrides: [model=mlp, data=blobs, callbacks=default]\n"
    )
    assert sweep_cli(["launch", "narrow.yaml", "--config-dir", "conf", "--executor", "local", "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        "deconcnn-sweep: error: run S-narrow: model.width: mypkg.models.MLP takes no argument 'width' "
        "(it takes: dim, hidden, num_classes)\n"
    )
    # without the variant's width the user's model passes: no width/norm contract of its own
    (importable / "plain.yaml").write_text(
        "name: plain\nvariants:\n  S-plain:\n    experiment: blobs_mlp\n    overrides: [callbacks=default]\n"
    )
    assert sweep_cli(["launch", "plain.yaml", "--config-dir", "conf", "--executor", "local", "--dry-run"]) == 0
    assert "1 runs validated" in capsys.readouterr().out


def test_smoke_shrinks_the_width_only_of_a_model_that_has_one(importable, capsys):
    argv = ["launch", "blobs.yaml", "--config-dir", "conf", "--executor", "local", "--smoke", "--dry-run", "--json"]
    assert sweep_cli(argv) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert all(row["overrides"][-2:] == ["debug=smoke", "~model.width"] for row in rows)  # debug=smoke sets one
    assert (
        "note: mlp: its runs train on SyntheticSource, although its experiment (blobs_mlp) names BlobsDataModule"
        in (captured.err)
    )


def test_the_check_run_of_a_user_s_model_keeps_its_size_and_says_so(importable):
    from deconcnn.sweep.check.runner import prepare_checks
    from deconcnn.sweep.grid import plan

    runs = plan("blobs.yaml", out="results", config_dirs=["conf"]).runs
    checks = {c.variant: c for c in prepare_checks(runs, importable / "check", gpu=False)}
    assert "~model.width" in checks["mlp"].command.args  # debug=check's width is the ResNet's
    assert "mypkg.models.MLP has no model.width to cap: the check runs it as configured" in checks["mlp"].notes
    assert "model.hidden=128" in checks["mlp-wide"].command.args
