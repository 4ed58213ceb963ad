"""What a launch prints while it runs (deconcnn.sweep.progress): the local progress bar on a
terminal of 80 columns, plain lines elsewhere, a SLURM launch's job arrays."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from deconcnn.backends import Handle
from deconcnn.sweep.launch import LaunchResult
from deconcnn.sweep.progress import LocalProgress, slurm_lines

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def local_result(n: int) -> LaunchResult:
    return LaunchResult(
        "local", False, Path("/results/demo"), submitted=[f"S-core_lr0.1_s{i}" for i in range(n)], slots=2
    )


def drive(console: Console) -> LocalProgress:
    progress = LocalProgress(console)
    progress.submitted(local_result(3))
    progress.polled(2)
    progress.run_done("S-core_lr0.1_s0", "completed")
    progress.polled(2)
    progress.run_done("S-core_lr0.1_s1", "failed")
    progress.polled(1)
    progress.run_done("S-core_lr0.1_s2", "diverged")
    progress.close()
    return progress


def test_on_an_80_column_terminal_a_bar_with_counts_and_a_line_per_run():
    out = io.StringIO()
    progress = drive(Console(file=out, force_terminal=True, width=80, color_system="standard"))
    screen = ANSI.sub("", out.getvalue()).replace("\r", "\n")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "[1/3] S-core_lr0.1_s0: completed" in lines
    assert "[2/3] S-core_lr0.1_s1: failed" in lines
    assert "[3/3] S-core_lr0.1_s2: diverged" in lines
    bars = {re.sub(r"\d\d:\d\d:\d\d", "T", line) for line in lines if line.startswith("runs ")}
    assert {bar.split(" ", 2)[2] for bar in bars} == {  # after the bar itself: the counts
        "0/3 running 0, failed 0, ETA -",
        "0/3 running 2, failed 0, ETA -",
        "1/3 running 2, failed 0, ETA T",
        "2/3 running 2, failed 1, ETA T",
        "2/3 running 1, failed 1, ETA T",
        "3/3 running 1, failed 1",
    }
    assert progress.summary().endswith("3/3 runs ended in " + progress.summary().split(" in ")[1])
    assert progress.summary().split(": ", 1)[1] == "1 completed, 1 failed, 1 diverged"


def test_off_a_terminal_plain_lines_carry_the_counts():
    out = io.StringIO()
    drive(Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert lines[0] == "3 runs start here, 2 at a time (Ctrl-C stops them; a relaunch resumes them)"
    assert lines[1] == "follow them from another terminal: deconcnn-sweep status /results/demo"
    assert re.fullmatch(r"\[1/3\] S-core_lr0.1_s0: completed  \(running 2, failed 0, ETA \d\d:\d\d:\d\d\)", lines[2])
    assert re.fullmatch(r"\[2/3\] S-core_lr0.1_s1: failed  \(running 2, failed 1, ETA \d\d:\d\d:\d\d\)", lines[3])
    assert lines[4] == "[3/3] S-core_lr0.1_s2: diverged  (running 1, failed 1)"  # a long line is not wrapped
    assert len(lines) == 5 and "\x1b" not in out.getvalue()


def test_a_slurm_launch_lists_each_job_array_and_the_status_command():
    runs = [f"S-core_s{i}" for i in range(5)]
    result = LaunchResult(
        "slurm",
        True,
        Path("/results/tiny"),
        submitted=runs,
        sbatch_calls=2,
        job_ids=["41_0", "41_1", "41_2", "42"],
        packs={
            Handle("slurm", "41_0"): runs[0:2],
            Handle("slurm", "41_1"): runs[2:4],
            Handle("slurm", "41_2"): runs[4:5],
            Handle("slurm", "42"): ["S-adamw_s0"],
        },
    )
    assert slurm_lines(result) == [
        "2 sbatch call(s), 2 job array(s), 4 tasks:",
        "  job 41: array tasks 0-2, 5 runs (1/2 per task), S-core_s0 .. S-core_s4",
        "  job 42: one job, no array, 1 runs (1 per task), S-adamw_s0 .. S-adamw_s0",
        "follow it: deconcnn-sweep status /results/tiny --watch",
    ]
