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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (`make test`) every SLURM test runs on one worker, one at a time: they share the one
    cluster and each empties its queue. tryfirst: xdist reads the groups after this hook."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    # The SLURM tests together take longest: first, so the other workers run everything else beside them.
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed SLURM test's report ends with the node's state and the queue at the moment it failed."""
    report = yield
    if report.failed and item.get_closest_marker("slurm") and call.when == "call":
        report.sections.append(("SLURM cluster at the failure", cluster_report()))
    return report
