"""deconcnn.sweep.slurm without a cluster: parsing helpers, error reporting, import cost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from deconcnn.backends.slurm import cli as slurm
from deconcnn.backends.slurm.cli import SlurmError, expand_array_id, normalise_state, sacct_states


def test_normalise_state() -> None:
    assert normalise_state("CANCELLED by 0") == "CANCELLED"
    assert normalise_state("running") == "RUNNING"
    assert normalise_state("  ") == "UNKNOWN"


def test_expand_array_id() -> None:
    assert expand_array_id("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_array_id("12_[0-6:3]") == ["12_0", "12_3", "12_6"]
    assert expand_array_id("12_[7]") == ["12_7"]
    assert expand_array_id("12_4") == ["12_4"]
    assert expand_array_id("12") == ["12"]


def test_sacct_states_parses_one_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "sacct"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        "cat <<'EOF'\n7_0|COMPLETED\n7_1|CANCELLED by 0\n7_[2-3%1]|PENDING\n8|RUNNING\nEOF\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert sacct_states([]) == {}
    assert sacct_states(["7", "8", "7"]) == {
        "7_0": "COMPLETED",
        "7_1": "CANCELLED",
        "7_2": "PENDING",
        "7_3": "PENDING",
        "8": "RUNNING",
    }
    lines = calls.read_text().splitlines()
    assert len(lines) == 1
    assert "--parsable2 --noheader -X --format=JobID,State --jobs 7,8" in lines[0]


def test_squeue_states_reads_state_reason_and_start_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "squeue"
    fake.write_text(
        "#!/bin/sh\ncat <<'EOF'\n9_0|RUNNING|2026-11-30T14:24:48|None\n9_[1-2%1]|PENDING|N/A|JobArrayTaskLimit\nEOF\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    states = slurm.squeue_states(["9_0", "9_1"])
    assert states["9_0"] == ("RUNNING", "None", time.mktime((2026, 11, 30, 14, 24, 48, 0, 0, -1)))
    assert states["9_1"] == states["9_2"] == ("PENDING", "JobArrayTaskLimit", None)


def test_errors_carry_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'slurm_load_ctl_conf error: Unable to contact' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(SlurmError, match="Unable to contact") as info:
        slurm.max_array_size()
    assert info.value.returncode == 1
    assert info.value.cmd == ["scontrol", "show", "config"]


def test_missing_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm.slurm_available() is False
    with pytest.raises(SlurmError, match="command not found"):
        sacct_states(["1"])


def test_import_is_light() -> None:
    code = "import sys, deconcnn.backends.slurm.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
