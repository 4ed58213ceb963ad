"""A full disk: the run ends `failed` with the reason, nothing half-written is trusted, and once
space is freed the same command finishes it with every step logged once.

Needs a small filesystem: a tmpfs mounted for the test (root); skipped elsewhere, with the reason.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from runs import TINY, read_log, read_status, train_forked

from deconcnn.runlog.run_status import RunStatusFile, read_run_status


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def train_logged(run_dir: Path) -> int:
    """deconcnn-train with its output in the run directory, as the sweep's runner starts it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return train_forked(
        [*TINY, f"hydra.run.dir={run_dir}"], run_dir / "stdout.log", timeout=600, env={"OMP_NUM_THREADS": "1"}
    )


@pytest.mark.slow
def test_full_disk_fails_cleanly_and_the_relaunch_completes(small_disk):
    run_dir = small_disk / "run"
    assert train_logged(run_dir) != 0
    status = read_status(run_dir)
    assert status["status"] == "failed"
    assert "No space left on device" in status["error"]
    assert "No space left on device" in (run_dir / "stdout.log").read_text()
    checkpoints = run_dir / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no half-written file
    for path in checkpoints.glob("*.ckpt"):
        torch.load(path, weights_only=False)  # every checkpoint left is whole

    resize(small_disk, "64m")
    assert train_logged(run_dir) == 0
    steps = Counter(r["step"] for r in read_log(run_dir) if r["kind"] == "train")
    assert sorted(steps) == list(range(32)) and set(steps.values()) == {1}
    assert [r["epoch_frac"] for r in read_log(run_dir) if r["kind"] == "val"] == [0.25 * i for i in range(1, 9)]
    final = read_status(run_dir)
    assert final["status"] == "completed" and final["attempt"] == 2 and final["error"] is None


def test_run_json_is_its_json_alone(tmp_path):
    # It used to end in 1.8 KB of spaces (a reserve for the full-disk rewrite), which filled a terminal.
    status = RunStatusFile(tmp_path, "r")
    status.start()
    text = (tmp_path / "run.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == status.data.to_json()


def test_final_status_is_written_in_place_when_no_block_is_free(small_disk):
    run_dir = small_disk / "run"
    run_dir.mkdir()
    status = RunStatusFile(run_dir, "r")
    status.start()
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # take every free block
        for size in (65536, 4096, 1):
            try:
                while True:
                    filler.write(b"\0" * size)
            except OSError:
                pass
    with pytest.raises(OSError):
        (small_disk / "probe").write_bytes(b"x" * 8192)
    status.finish("failed", 7, error="OSError: [Errno 28] No space left on device " + "x" * 400)  # it grows
    assert read_run_status(run_dir) == status.data
    assert json.loads((run_dir / "run.json").read_text())["last_step"] == 7
