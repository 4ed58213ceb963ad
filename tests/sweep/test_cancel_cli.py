"""cancel's closing lines: the command that runs the cancelled runs again names the real sweep file."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

from fake_sweep import SUBMISSION, make_sweep, run_id

from deconcnn.backends import processes
from deconcnn.cli import run as sweep_cli
from deconcnn.runlog.run_status import PROCESS_FILE
from deconcnn.sweep.sweepdir import SweepDir


def test_cancel_names_the_sweep_file_to_relaunch(tmp_path, capsys, monkeypatch):
    running = run_id("S-core", 0.1, 1e-3, 0)
    sweep = make_sweep(
        tmp_path / "out" / "sweep", variants=("S-core",), lrs=(0.1,), wds=(1e-3,), seeds=(0,), running=[running]
    )
    # A live process of the run's submission, in its own group (what cancel stops).
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        process = replace(processes.identity(child.pid), submission_id=SUBMISSION)
        (SweepDir(sweep.path).run_dir(running) / PROCESS_FILE).write_text(json.dumps(process.to_json()))
        monkeypatch.chdir(tmp_path)
        assert sweep_cli(["cancel", str(sweep.path), "--grace", "1"]) == 0
        out = capsys.readouterr().out
        assert child.wait(timeout=10) != 0  # stopped
    finally:
        child.kill()
    assert "cancelled 1 runs (1 stopped on this machine" in out
    assert "relaunch to run them again: deconcnn-sweep launch out/sweep/fake.yaml --out out (status:" in out
    assert "<sweep file>" not in out
