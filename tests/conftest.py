"""Fixtures for tests that need the local SLURM cluster (scripts/slurm_start.sh).

The cluster is shared by every SLURM test of the session, so each test starts on an empty queue and
a usable node, and leaves no job behind: one failed test must not leave jobs or a drained node that
make every later test wait out its timeouts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import CLUSTER, clear_queue, cluster_name, cluster_report, resume_node

from deconcnn.backends.slurm.cli import slurm_available


@pytest.fixture
def slurm_cluster() -> Iterator[None]:
    """Skip, with the reason shown, unless the local test cluster answers `scontrol ping`; otherwise
    an empty queue and a usable node before the test, and an empty queue after it."""
    if not slurm_available():
        pytest.skip(
            "no SLURM cluster: sbatch/squeue not on PATH or `scontrol ping` not UP "
            "(start one with `sudo scripts/slurm_start.sh`; needs root on Debian)"
        )
    if (name := cluster_name()) != CLUSTER:
        pytest.skip(f"SLURM cluster {name!r} is not the local test cluster {CLUSTER!r}: these tests cancel every job")
    clear_queue()
    resume_node()
    yield
    clear_queue()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that hold a slow test run first, each module's order kept. `make test` hands whole
    modules to its workers in this order (--dist loadscope, so a module's fixtures are built once;
    --no-loadscope-reorder, so xdist keeps it), and a long module handed out last would run alone
    while the other workers sit idle. A test that takes more than a few seconds is marked slow."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed SLURM test's report ends with the node's state and the queue at the moment it failed."""
    report = yield
    if report.failed and item.get_closest_marker("slurm") and call.when == "call":
        report.sections.append(("SLURM cluster at the failure", cluster_report()))
    return report
