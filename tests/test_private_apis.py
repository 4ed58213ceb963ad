"""The private APIs deconcnn still leans on, each pinned to the behaviour it relies on: an upgrade
that changes one fails here, by name, instead of somewhere downstream.

Why each stays (no public API does it):
- Hydra `BasicSweeper.split_arguments`: the sweeper's own cartesian product of sweep overrides
  (sweep/grid.py expands a sweep file's axes exactly as `-m` would);
- Hydra `ConfigLoaderImpl._apply_overrides_to_config`: applies parsed overrides to a composed config
  the way composition does (sweep/grid.py validates hundreds of runs from a few compositions);
- Hydra `_internal.utils._locate`: what `instantiate` imports a `_target_` with (runconfig.py);
  the public `hydra.utils.get_object` wraps it but logs an error line of its own first;
- the submitit launcher's `launch()` mapping of its settings to submitit (backends/slurm/settings.py
  `submitit_kwargs` builds the executor itself, to submit packs of runs);
- Lightning `fit_loop.epoch_loop.batch_progress`: the batches trained in the current epoch, which
  Lightning restores on resume (training/data.py's resumable loader);
- lightning_fabric `_convert_params` / `_flatten_dict`: the params a logger logs, as it logs them
  (training/loggers.py compares them with an MLflow run's);
- OmegaConf `_get_node`: a child node without resolving interpolations (runconfig.targets);
- `atexit._run_exitfuncs`: the exit handlers a forked run runs before os._exit, as the interpreter's
  exit would (backends/preloaded.py).
"""

from __future__ import annotations

import inspect

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf


def test_hydra_basic_sweeper_split_arguments_is_the_cartesian_product_in_order():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3"])
    batches = BasicSweeper.split_arguments(overrides, None)
    assert batches == [[["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]]


def test_hydra_apply_overrides_to_config_edits_a_composed_config_in_place():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create({"optim": {"lr": 0.1, "wd": 0.0}, "seed": 0})
    OmegaConf.set_struct(cfg, True)  # as composition leaves it
    parsed = OverridesParser.create().parse_overrides(["optim.lr=0.2", "+extra=1", "~optim.wd", "seed=3"])
    ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    assert OmegaConf.to_container(cfg) == {"optim": {"lr": 0.2}, "seed": 3, "extra": 1}
    with pytest.raises(Exception, match="nope"):  # an unknown key is refused, as composition refuses it
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(["nope=1"]), cfg)


def test_hydra_locate_imports_what_instantiate_would():
    from hydra._internal.utils import _locate

    from deconcnn.training.resnet import CifarResNet18

    assert _locate("deconcnn.training.resnet.CifarResNet18") is CifarResNet18
    with pytest.raises(ImportError):
        _locate("deconcnn.training.no_such_module.f")


def test_submitit_kwargs_is_the_submitit_launcher_s_own_mapping(tmp_path, monkeypatch):
    """The plugin's launch() builds its executor from the same settings: both must hand submitit
    the same constructor and update_parameters arguments."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from deconcnn.backends.slurm.settings import compose_launcher, submitit_kwargs

    values = compose_launcher([], ["hydra.launcher.max_num_timeout=3", "hydra.launcher.comment=x"])
    values.pop("python", None)  # ours alone (INIT_KEYS): the plugin's schema lacks it
    seen: dict[str, dict] = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen["init"] = kwargs

        def update_parameters(self, **kwargs):
            seen["params"] = kwargs
            raise StopIteration  # enough: what follows submits

    monkeypatch.setattr(submitit, "AutoExecutor", Recorder)
    plugin = SlurmLauncher(**{k: v for k, v in values.items() if k != "_target_"})
    plugin.params["submitit_folder"] = str(tmp_path)
    plugin.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(StopIteration):
        plugin.launch([["a=1"]], 0)
    init, params = submitit_kwargs(values, "job")
    assert {k: v for k, v in seen["init"].items() if k not in ("folder", "cluster")} == init
    assert init == {"slurm_max_num_timeout": 3}
    theirs = {k: v for k, v in seen["params"].items() if v is not None and k != "name"}
    assert theirs == {k: v for k, v in params.items() if k != "name"}
    assert params["slurm_comment"] == "x" and params["name"] == "job"


def test_lightning_batch_progress_counts_the_batches_trained_in_this_epoch(tmp_path):
    import pytorch_lightning as pl
    import torch

    counts: list[tuple[int, int, int]] = []

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
            counts.append((self.trainer.current_epoch, batch_idx, done))

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(6, 2)), batch_size=2)
    trainer = pl.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Model(), data)
    # completed is bumped after on_train_batch_end: inside it, the batches before this one
    assert counts == [(e, i, i) for e in (0, 1) for i in range(3)]
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 3


def test_lightning_fabric_flattens_params_as_loggers_log_them():
    from lightning_fabric.utilities.logger import _convert_params, _flatten_dict

    params = OmegaConf.create({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0})
    flat = _flatten_dict(_convert_params(params))
    assert flat == {"optim/lr": 0.1, "optim/betas": [0.9, 0.99], "seed": 0}


def test_omegaconf_get_node_returns_a_child_without_resolving_it():
    cfg = OmegaConf.create({"a": {"_target_": "x.y", "b": "${missing}"}, "l": [{"_target_": "z"}]})
    node = cfg._get_node("a")
    assert isinstance(node, DictConfig) and node._get_node("b")._value() == "${missing}"
    assert isinstance(cfg._get_node("l"), ListConfig) and cfg._get_node("l")._get_node(0)._target_ == "z"
    assert "key" in inspect.signature(DictConfig._get_node).parameters


def test_atexit_run_exitfuncs_runs_the_registered_handlers_last_in_first_out():
    import atexit

    ran: list[int] = []
    for n in (1, 2):
        atexit.register(ran.append, n)
    try:
        atexit._run_exitfuncs()
        assert ran == [2, 1]
    finally:
        atexit.unregister(ran.append)
