"""Bad input to deconcnn-train: a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from runs import TINY, train_cli

from deconcnn.runlog.run_status import RUN_STATUS_FILE

# Data the run looks for loads the training stack first (~6 CPU-s); Hydra's refusals and
# check_config's do not.
TRAINS = pytest.mark.slow


@pytest.mark.parametrize(
    ("args", "message", "started"),
    [
        ([*TINY, "experiment=no_such_experiment"], "Could not find 'experiment/no_such_experiment'", False),
        ([*TINY, "no_such_key=1"], "Key 'no_such_key' is not in struct", False),
        ([*TINY, "optim.lr=-0.1"], "optim.lr must be > 0, got -0.1", False),
        ([*TINY, "model.width=0"], "model.width must be > 0, got 0", False),
        pytest.param(
            ["data=cifar10", "data.source.data_dir=/nonexistent/cifar"],
            "CIFAR-10 not found in /nonexistent/cifar",
            True,
            marks=TRAINS,
        ),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, args, message, started):
    result = train_cli([f"hydra.run.dir={tmp_path}", *args])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    # A refusal before the run starts leaves no run.json; a run that started records why it failed.
    assert (tmp_path / RUN_STATUS_FILE).exists() == started


def test_print_job_config_of_a_variant():
    result = train_cli(["--cfg", "job", "experiment=loss_lin_slope_bn_off"])
    assert result.returncode == 0, result.stderr
    assert "variant: S-bn-off" in result.stdout and "gradient_clip_val: 1.0" in result.stdout
