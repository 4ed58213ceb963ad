"""The SLURM settings of a sweep, checked before sbatch sees any of them.

They are hydra-submitit-launcher's own config (`conf/hydra/launcher/deconcnn_slurm.yaml` or another
`hydra/launcher` choice, then `hydra.launcher.*` overrides), composed by Hydra, which refuses unknown
keys and wrong types. What Hydra lets through and sbatch would take badly is refused here, with the
key: control characters (a newline ends an #SBATCH line and starts a shell command), a time limit
that leaves no room for the checkpointing signal, more than one task per pack. `check_feasible` then
asks the cluster (sinfo) whether any node of the partition can ever hold one task.

The mapping to submitit's parameters is the plugin's own: the fields of its BaseQueueConf go to
submitit unprefixed, `max_num_timeout` (and `python`, see INIT_KEYS) to the executor's constructor,
everything else as `slurm_<field>` (hydra_plugins.hydra_submitit_launcher.submitit_launcher).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, cast

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from deconcnn.runconfig import compose_run_config, config_error_text
from deconcnn.runlog.errors import SweepError

DEFAULT_LAUNCHER = "deconcnn_slurm"
BASE_KEYS = frozenset(f.name for f in dataclasses.fields(BaseQueueConf))
# The plugin passes these to the executor's constructor (its `specific_init_keys`), and `python`
# (submitit's command that starts the job's Python: `apptainer exec --nv IMAGE python3`, say) goes
# there too: the plugin's schema lacks it, so it is set as `+hydra.launcher.python=...`.
INIT_KEYS = frozenset({"max_num_timeout", "python"})
NOT_PASSED = frozenset({"_target_", "submitit_folder"})  # the sweep directory chooses the folder
#: Seconds a run needs between the checkpointing signal and the time limit, beyond signal_delay_s.
SIGNAL_MARGIN_S = 60
OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LauncherError(SweepError):
    """A launcher value sbatch would refuse, misread, or never be able to satisfy."""


def compose_launcher(run_overrides: Sequence[str], launcher_overrides: Sequence[str]) -> dict[str, Any]:
    """hydra.launcher as Hydra composes it for these overrides (default choice: deconcnn_slurm)."""
    for override in launcher_overrides:
        if CONTROL.search(override):
            key = override.split("=", 1)[0]
            raise LauncherError(
                f"{key}: control character (newline, tab, ...) in the value {override!r}: "
                "sbatch would misread the job script"
            )
    chosen = any(o.lstrip("+~").startswith("hydra/launcher=") for o in launcher_overrides)
    overrides = [*([] if chosen else [f"hydra/launcher={DEFAULT_LAUNCHER}"]), *launcher_overrides]
    try:
        cfg = compose_run_config([*run_overrides, *overrides], hydra_config=True)
        values = cast(dict[str, Any], OmegaConf.to_container(cfg.hydra.launcher, resolve=False))
    except Exception as error:  # noqa: BLE001  Hydra's message names the key and the value
        raise LauncherError(f"launcher settings: {config_error_text(error)}") from None
    assert isinstance(values, dict)
    if not str(values.get("_target_", "")).endswith("SlurmLauncher"):
        raise LauncherError(
            f"launcher settings: {values.get('_target_')} is not a SLURM launcher "
            "(choose hydra/launcher=deconcnn_slurm or submitit_slurm)"
        )
    validate(values)
    return values


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        pairs = [(f"{where}.{k}", str(k)) for k in value]
        return pairs + [p for k, v in value.items() for p in _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _strings(v, f"{where}[{i}]")]
    return []


def validate(values: dict[str, Any]) -> None:
    """Raise LauncherError on the first value sbatch would take badly (module doc)."""
    for where, text in _strings(values, "hydra.launcher"):
        if CONTROL.search(text):
            raise LauncherError(
                f"{where}: control character (newline, tab, ...) in {text!r}: sbatch would misread the job script"
            )
    for key in values.get("additional_parameters") or {}:
        if not OPTION_NAME.match(str(key)):
            raise LauncherError(f"hydra.launcher.additional_parameters: {key!r} is not an sbatch option name")

    def at_least(key: str, low: int) -> None:
        value = values.get(key)
        if value is not None and value < low:
            raise LauncherError(f"hydra.launcher.{key} must be >= {low}, got {value}")

    for key, low in (
        ("timeout_min", 1),
        ("cpus_per_task", 1),
        ("gpus_per_node", 0),
        ("mem_gb", 1),
        ("array_parallelism", 1),
        ("signal_delay_s", 0),
        ("max_num_timeout", 0),
    ):
        at_least(key, low)
    for key in ("nodes", "tasks_per_node"):
        if values.get(key, 1) != 1:
            raise LauncherError(
                f"hydra.launcher.{key} must be 1, got {values[key]}: a pack is one task on one "
                "node (use --workers-per-gpu to pack several runs per GPU)"
            )
    timeout_s, delay = 60 * values["timeout_min"], values.get("signal_delay_s") or 0
    if timeout_s < delay + SIGNAL_MARGIN_S:
        raise LauncherError(
            f"hydra.launcher.timeout_min={values['timeout_min']} is too short for "
            f"signal_delay_s={delay}: the checkpointing signal would come "
            f"{'before the job starts' if delay >= timeout_s else f'{timeout_s - delay} s after it starts'}; "
            f"allow at least {SIGNAL_MARGIN_S} s more than signal_delay_s"
        )


def submitit_kwargs(values: dict[str, Any], job_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(AutoExecutor constructor kwargs, update_parameters kwargs), mapped as the plugin maps them."""
    init = {f"slurm_{k}": v for k, v in values.items() if k in INIT_KEYS}
    params = {}
    for key, value in values.items():
        if key in INIT_KEYS or key in NOT_PASSED or value is None:
            continue
        params[key if key in BASE_KEYS else f"slurm_{key}"] = value
    params["name"] = job_name
    return init, params


def check_feasible(values: dict[str, Any]) -> None:
    """Refuse a task no node of the partition can ever hold (it would pend forever, reason
    PartitionConfig): one sinfo call, the numbers in the message."""
    from deconcnn.backends.slurm.cli import partition_nodes

    partition = values.get("partition")
    nodes = partition_nodes(partition)
    where = f"partition {partition}" if partition else "the default partition"
    if not nodes:
        raise LauncherError(
            f"hydra.launcher.partition={partition}: sinfo lists no such partition"
            if partition
            else "the cluster has no default partition: set hydra.launcher.partition"
        )
    cpus = (values.get("cpus_per_task") or 1) * (values.get("tasks_per_node") or 1)
    memory_mb = (values.get("mem_gb") or 0) * 1024
    gpus = values.get("gpus_per_node") or 0
    minutes = values.get("timeout_min") or 0
    for node in nodes:
        if (
            node.cpus >= cpus
            and node.memory_mb >= memory_mb
            and node.gpus >= gpus
            and (node.time_limit_min is None or node.time_limit_min >= minutes)
        ):
            return
    big = max(nodes, key=lambda n: (n.cpus, n.memory_mb, n.gpus))
    short = [
        f"cpus_per_task={cpus}" if big.cpus < cpus else "",
        f"mem_gb={memory_mb // 1024}" if big.memory_mb < memory_mb else "",
        f"gpus_per_node={gpus}" if big.gpus < gpus else "",
        f"timeout_min={minutes}" if big.time_limit_min is not None and big.time_limit_min < minutes else "",
    ]
    limit = "no time limit" if big.time_limit_min is None else f"a {big.time_limit_min:g} min limit"
    raise LauncherError(
        f"no node of {where} can run one task: it asks {cpus} CPUs, {memory_mb / 1024:g} GB, "
        f"{gpus} GPUs for {minutes} min; the largest node ({big.name}) has {big.cpus} CPUs, "
        f"{big.memory_mb / 1024:.0f} GB, {big.gpus} GPUs, {limit}: lower hydra.launcher."
        f"{' / '.join(s for s in short if s)}"
    )
