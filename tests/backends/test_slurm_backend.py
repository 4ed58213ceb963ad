"""The SLURM backend passes the contract suite on the real local cluster (scripts/slurm_start.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from contract import BackendContract, Harness

from deconcnn.backends import Handle
from deconcnn.backends.slurm import SlurmBackend
from sweeps import LOCAL_SLURM

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SUPPORT = Path(__file__).resolve().parents[1] / "support"


class SlurmHarness(Harness):
    timeout_s = 180.0
    poll_s = 1.0

    def backend(self) -> SlurmBackend:
        return SlurmBackend.create(self.root / "slurm", SlurmBackend.settings([], LOCAL_SLURM))

    def lost_handle(self) -> Handle:
        """A task id no job of the cluster has had (its ids count up from 1)."""
        return Handle(SlurmBackend.kind, "2000000000_0")


class TestSlurmBackend(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path, monkeypatch, slurm_cluster):
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
        return SlurmHarness(tmp_path)
