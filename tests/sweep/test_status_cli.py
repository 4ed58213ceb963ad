"""status: the watch interval floor and the link to a sweep's report."""

from __future__ import annotations

from fake_sweep import make_sweep

from deconcnn.cli import run as sweep_cli
from deconcnn.cli import watch_interval
from deconcnn.analysis.report import report


def test_watch_never_polls_more_often_than_every_30_seconds():
    assert watch_interval(1) == 30 and watch_interval(0) == 30 and watch_interval(120) == 120


def test_status_links_the_report_once_there_is_one(tmp_path, capsys, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep", variants=("S-core",), lrs=(0.1,), wds=(1e-3,), seeds=(0,),
                       epochs=1, steps_per_epoch=4)
    monkeypatch.setenv("COLUMNS", "200")
    assert sweep_cli(["status", str(sweep.path)]) == 0
    assert "report:" not in capsys.readouterr().out
    report(sweep.path)
    assert sweep_cli(["status", str(sweep.path)]) == 0
    assert f"report: {sweep.path / 'report' / 'index.html'}" in capsys.readouterr().out
