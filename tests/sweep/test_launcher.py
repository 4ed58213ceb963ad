"""The SLURM settings: mapped to submitit as hydra-submitit-launcher maps them, and the node
feasibility arithmetic on sinfo's numbers."""

from __future__ import annotations

import pytest

from deconcnn.backends.slurm import cli as slurm_cli
from deconcnn.backends.slurm.settings import LauncherError, check_feasible, compose_launcher, submitit_kwargs


def test_submitit_mapping_is_the_plugin_s():
    values = compose_launcher(
        ["experiment=loss_lin_slope_base"],
        ["hydra.launcher.partition=gpu", "+hydra.launcher.python=apptainer exec --nv /img.sif python3"],
    )
    init, params = submitit_kwargs(values, "deconcnn-x")
    assert init == {"slurm_max_num_timeout": 3, "slurm_python": "apptainer exec --nv /img.sif python3"}
    assert params["timeout_min"] == 120 and params["gpus_per_node"] == 1 and params["name"] == "deconcnn-x"
    assert params["slurm_partition"] == "gpu" and params["slurm_signal_delay_s"] == 120
    assert "submitit_folder" not in params and "_target_" not in params and "slurm_account" not in params  # None: unset


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"cpus_per_task": 2, "mem_gb": 4, "gpus_per_node": 1, "timeout_min": 60}, None),
        ({"cpus_per_task": 9, "mem_gb": 4, "gpus_per_node": 1, "timeout_min": 60}, "cpus_per_task=9"),
        ({"cpus_per_task": 2, "mem_gb": 4, "gpus_per_node": 1, "timeout_min": 300}, "timeout_min=300"),
        ({"cpus_per_task": 2, "mem_gb": 99, "gpus_per_node": 3, "timeout_min": 60}, "mem_gb=99 / gpus_per_node=3"),
    ],
)
def test_a_node_must_hold_one_task(monkeypatch, request_, expected):
    nodes = [
        slurm_cli.NodeResources("small", 2, 8 * 1024, 1, 120.0),
        slurm_cli.NodeResources("big", 8, 32 * 1024, 2, 240.0),
    ]
    monkeypatch.setattr(slurm_cli, "partition_nodes", lambda partition: nodes)
    if expected is None:
        check_feasible(request_)
    else:
        with pytest.raises(LauncherError, match=expected):
            check_feasible(request_)


def test_sinfo_time_limits_and_gres():
    assert slurm_cli._minutes("1-02:03:04") == pytest.approx(1563.07, abs=0.01)
    assert (
        slurm_cli._minutes("30") == 30 and slurm_cli._minutes("10:00") == 10 and slurm_cli._minutes("infinite") is None
    )
    assert slurm_cli._gpus("gpu:a100:4(S:0-1)") == 4 and slurm_cli._gpus("(null)") == 0
