"""Fixtures for tests that need the local SLURM cluster (scripts/slurm_start.sh)."""

from __future__ import annotations

import pytest

from deconcnn.sweep.executors.slurm_cli import slurm_available


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip, with the reason shown, unless a SLURM controller answers `scontrol ping`."""
    if not slurm_available():
        pytest.skip(
            "no SLURM cluster: sbatch/squeue not on PATH or `scontrol ping` not UP "
            "(start one with `sudo scripts/slurm_start.sh`; needs root on Debian)"
        )
