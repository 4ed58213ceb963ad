"""Sweep file -> runs, through Hydra's own override grammar and sweeper expansion.

A sweep file names its variants (each a Hydra experiment), axes written exactly like `-m` arguments
(`0.05,0.1,0.2`, `range(0,6)`, `choice(...)`), optionally per variant, and a run-id template. Every
run's config is composed and checked before anything is submitted.
"""

from __future__ import annotations

import copy
import decimal
import fnmatch
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import omegaconf
import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, RangeSweep, Transformer
from omegaconf import DictConfig, ListConfig, OmegaConf

from deconcnn.backends import Backend, Command, is_launcher_override
from deconcnn.backends.pack import TRAIN_MODULE
from deconcnn.runconfig import (
    DEBUG_GROUP,
    check_config,
    check_target,
    compose_run_config,
    config_error_text,
    data_target,
    debug_settings,
    targets,
)
from deconcnn.runlog.errors import SweepError
from deconcnn.runlog.layout import DEFAULT_OUT, RUNS_DIR, run_id_problem
from deconcnn.runlog.records import Manifest, RunEntry, gc_paused
from deconcnn.sweep.limits import MAX_RUNS, MAX_SWEEP_FILE_BYTES, MAX_YAML_NODES
from deconcnn.sweep.shapes import Settings, Shape
from deconcnn.sweep.sweepdir import SweepDir, code_version
from deconcnn.sweep.validated import Validations, launcher_key, overrides_key

EXPERIMENT_GROUP = "experiment"
SEARCHPATH_KEY = "hydra.searchpath"
MODEL_PREFIX = "model."
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")

# Where a run's files go is deconcnn-sweep's to set (OUT/<sweep>/runs/<run id>), never an override's.
PLACEMENT_KEYS = ("run_dir", "hydra.run.dir", "hydra.output_subdir", "hydra.sweep.dir", "hydra.sweep.subdir")

# --smoke: the same grid, each run shrunk to 4 steps on synthetic data at width 0.125 (a width-1.0
# run writes 340 MB of checkpoints even when short), to prove every config runs end to end.
SMOKE_DEBUG = "smoke"


class ParsedOverrides:
    """Hydra's override parser, each distinct line parsed once: a sweep of 50,000 runs repeats a
    few hundred lines, and one parse takes about a millisecond."""

    def __init__(self) -> None:
        self.parser = OverridesParser.create()
        self.lines: dict[str, Override] = {}

    def __call__(self, lines: Sequence[str]) -> list[Override]:
        new = [line for line in dict.fromkeys(lines) if line not in self.lines]
        if new:
            self.lines.update(zip(new, self.parser.parse_overrides(new)))
        return [self.lines[line] for line in lines]


def _override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")


def with_debug(
    overrides: Sequence[str], name: str, model_keys: Collection[str] | None = None
) -> tuple[tuple[str, ...], list[str]]:
    """The run's overrides shrunk by the `debug` config `name`: the overrides it would not win
    against (its own keys, another debug choice, the keys under a group it replaces) are dropped
    and returned, and `debug=<name>` comes last. Given the keys of the run's own model config, a
    model setting of the debug config that model does not have (the ResNet's width, for a user's
    model) is deleted again: a shrink applies only to a model that takes it."""
    keys, groups = debug_settings(name)
    # A replaced group's source settings (data.source.data_dir of CIFAR-10) do not exist in its
    # replacement (the synthetic source): they go too.
    sources = tuple(f"{group}.source." for group in groups)

    def dropped(line: str) -> bool:
        key = _override_key(line)
        return key in keys or key in groups or key == DEBUG_GROUP or key.startswith(sources)

    kept = [o for o in overrides if not dropped(o)]
    foreign = (
        []
        if model_keys is None
        else [f"~{k}" for k in sorted(keys) if k.startswith(MODEL_PREFIX) and k[len(MODEL_PREFIX) :] not in model_keys]
    )
    return (*kept, f"{DEBUG_GROUP}={name}", *foreign), [o for o in overrides if dropped(o)]


class SweepFileError(SweepError):
    """The sweep file is malformed or expands to an invalid run."""


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    variant: str
    overrides: tuple[str, ...]
    params: dict[str, Any] = field(hash=False)

    @property
    def base(self) -> tuple[str, ...]:
        """The overrides that choose where the run's config comes from (its experiment, a user's
        config directory), without the values it sets: enough to compose its launcher settings."""
        return tuple(o for o in self.overrides if _override_key(o) in (EXPERIMENT_GROUP, SEARCHPATH_KEY))

    def entry(self) -> RunEntry:
        """The run as a new manifest lists it: never submitted."""
        return RunEntry(self.run_id, self.variant, self.overrides, self.params)

    def command(
        self, run_dir: Path, run_id: str | None = None, extra: Sequence[str] = (), sweep: str | None = None
    ) -> Command:
        """The training process of this run (or of a shortened copy of it, with `extra` overrides);
        `sweep` names the sweep to the run's loggers (W&B's group, MLflow's experiment)."""
        run_id = run_id or self.run_id
        directory = str(Path(run_dir).resolve())
        ids = (f"run_id={run_id}", *((f"sweep={sweep}",) if sweep else ()))
        return Command(run_id, TRAIN_MODULE, (*self.overrides, *extra, f"hydra.run.dir={directory}", *ids), directory)


@dataclass
class Sweep:
    name: str
    path: Path
    runs: list[RunSpec]
    launcher_overrides: list[str]
    variants: list[str] = field(default_factory=list)  # in the sweep file's order
    axes: list[str] = field(default_factory=list)  # config keys swept, shared ones first
    source: str | None = None  # sweep_source: what `runs` were expanded from

    def fingerprint(self) -> str:
        """Identifies what the sweep runs; changes when any run's overrides change."""
        blob = json.dumps([r.entry().identity_json() for r in self.runs], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, ListConfig)) or not all(isinstance(v, str) for v in value):
        raise SweepFileError(f"{where} must be a list of Hydra override strings")
    return list(value)


def _axis_overrides(axes: Any, where: str) -> list[str]:
    if axes is None:
        return []
    if not isinstance(axes, (dict, DictConfig)):
        raise SweepFileError(f"{where} must map config keys to sweep values")
    lines = []
    for name, value in axes.items():
        key = str(name)  # YAML keys may be numbers
        if isinstance(value, (list, ListConfig)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SweepFileError(f"{where}.{key}: expected a sweep expression like 0.1,0.2 or range(0,6)")
        lines.append(f"{key}={value}")
    return lines


def _format_value(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _run_id(template: str, variant: str, params: dict[str, Any]) -> str:
    context = {"variant": variant, **params}

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in context:
            raise SweepFileError(f"run_id template names {{{key}}}, which is not an axis of variant {variant}")
        return _format_value(context[key])

    return TEMPLATE_FIELD.sub(fill, template)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_nodes(root: yaml.Node) -> int:
    """The number of nodes the YAML tree holds once every alias is expanded, counted on the composed
    graph (where an alias is one shared node) without expanding it; a recursive alias is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes being counted: the ancestors of the one on top
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        if counted:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _yaml_children(node))
        elif id(node) not in sizes:
            if id(node) in open_nodes:
                raise SweepFileError(f"a recursive alias (line {node.start_mark.line + 1})")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _yaml_children(node))
    return sizes[id(root)]


def sweep_source(data: bytes, extra_overrides: Sequence[str], smoke: bool) -> str:
    """A hash of what a sweep's runs are expanded from: the sweep file's bytes, the overrides given
    to every run, --smoke, and the code that expands them (deconcnn's, Hydra's and OmegaConf's)."""
    digest = hashlib.sha256(data)
    versions = [code_version(), hydra.__version__, omegaconf.__version__]
    digest.update(json.dumps([list(extra_overrides), smoke, versions]).encode())
    return digest.hexdigest()[:16]


def sweep_dir_name(name: str, smoke: bool) -> str:
    """The sweep directory's name under OUT: a smoke sweep's is apart from the real one's."""
    return f"{name}-smoke" if smoke else name


def _load_yaml(path: Path) -> tuple[bytes, Any]:
    """The sweep file's bytes and the file as OmegaConf reads it, within MAX_SWEEP_FILE_BYTES and
    MAX_YAML_NODES: PyYAML shares an alias's node, but OmegaConf copies it, so a billion-laughs file
    would hang and fill memory there. Errors are SweepFileError, or the YAML parser's own (load_sweep words them)."""
    with open(path, "rb") as handle:  # read to the limit: a FIFO or /dev/zero has no size to stat
        data = handle.read(MAX_SWEEP_FILE_BYTES + 1)
    if len(data) > MAX_SWEEP_FILE_BYTES:
        raise SweepFileError(f"{path}: larger than {MAX_SWEEP_FILE_BYTES >> 20} MiB; a sweep file is a few lines")
    text = data.decode()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SweepFileError(f"{path}: not valid YAML: nested too deeply") from None
    try:
        nodes = _expanded_nodes(root) if root is not None else 0
    except SweepFileError as error:
        raise SweepFileError(f"{path}: not valid YAML: {error}") from None
    if nodes > MAX_YAML_NODES:
        raise SweepFileError(
            f"{path}: its aliases expand to {nodes:,} YAML nodes (more than {MAX_YAML_NODES:,}): refused"
        )
    return data, OmegaConf.load(io.StringIO(text))


def _sweep_length(override: Override) -> int:
    """How many values one axis takes, counted without listing them (`range(0,1e9)` is one number)."""
    if not override.is_sweep_override():
        return 1
    value = override.value()
    if isinstance(value, RangeSweep):
        assert value.start is not None and value.stop is not None  # the grammar requires both
        if value.step == 0:
            raise SweepFileError(f"{override.input_line}: a range's step must not be 0")
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return len(range(int(value.start), int(value.stop), int(value.step)))
        start, stop, step = (decimal.Decimal(x) for x in (value.start, value.stop, value.step))  # as Hydra steps
        return max(0, math.ceil((stop - start) / step))
    if isinstance(value, ChoiceSweep):
        return len(value.list)
    return 1  # glob(): a group's options, a handful (and BasicSweeper refuses interval())


def _axis_length(override: Override) -> int:
    length = _sweep_length(override)
    if length == 0:  # Hydra would expand the grid to no run at all
        raise SweepFileError(f"{override.input_line}: no values")
    return length


def load_sweep(
    path: str | Path,
    extra_overrides: Sequence[str] = (),
    smoke: bool = False,
    max_runs: int = MAX_RUNS,
    recorded: Callable[[str, str], Sequence[RunEntry] | None] | None = None,
) -> Sweep:
    """Read and expand a sweep file (no composition yet: see validate_runs). The number of runs is
    counted before they are listed: more than `max_runs` is refused at once, with the number.
    `recorded(name, source)`: the runs a sweep directory recorded when it was launched from this
    same source (sweep_source), None if it was not: those are the runs, not expanded again."""
    path = Path(path)
    try:
        data, spec = _load_yaml(path)
    except FileNotFoundError:
        raise SweepFileError(f"sweep file not found: {path}") from None
    except IsADirectoryError:
        raise SweepFileError(f"{path} is a directory, not a sweep file") from None
    except UnicodeDecodeError:
        raise SweepFileError(f"{path}: not valid YAML: not UTF-8 text") from None
    except yaml.MarkedYAMLError as error:  # problem + where: "found duplicate key S-core (line 9, column 3)"
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SweepFileError(f"{path}: not valid YAML: {error.problem or error.context}{where}") from None
    except SweepFileError:
        raise
    except Exception as error:  # noqa: BLE001  the YAML parser's own message says where
        raise SweepFileError(f"{path}: not valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(spec, DictConfig):
        raise SweepFileError(f"{path}: expected a mapping with name, axes and variants")
    unknown = {str(k) for k in spec} - {"name", "run_id", "overrides", "axes", "variants", "launcher"}
    if unknown:
        raise SweepFileError(f"{path}: unknown top-level keys {sorted(unknown)}")
    name = spec.get("name") or path.stem
    if not NAME_PATTERN.match(str(name)):
        raise SweepFileError(f"{path}: name {name!r} must be letters, digits, '_', '.', '-'")
    variants = spec.get("variants")
    if not isinstance(variants, DictConfig) or not variants:
        raise SweepFileError(f"{path}: 'variants' must map variant names to {{experiment: ...}}")
    shared_axes = _axis_overrides(spec.get("axes"), "axes")
    common = _as_list(spec.get("overrides"), "overrides")
    template = spec.get("run_id")
    parser = OverridesParser.create()
    axis_names = [line.split("=", 1)[0] for line in shared_axes]
    # First every variant's axes, parsed and counted; then, within the bound, its runs.
    grids: list[tuple[str, list[str], list[Override]]] = []
    for key, body in variants.items():
        variant = str(key)
        if not NAME_PATTERN.match(variant) or not isinstance(body, DictConfig):
            raise SweepFileError(f"{path}: variant {key!r} must be a name mapping to {{experiment: ...}}")
        if not isinstance(body.get("experiment"), str):
            raise SweepFileError(f"{path}: variant {variant} needs 'experiment: <conf/experiment file>'")
        axes = {line.split("=", 1)[0]: line for line in shared_axes}
        axes.update(
            {line.split("=", 1)[0]: line for line in _axis_overrides(body.get("axes"), f"variants.{variant}.axes")}
        )
        axis_names += [key for key in axes if key not in axis_names]
        try:
            parsed = parser.parse_overrides(list(axes.values()))
        except Exception as error:  # noqa: BLE001  Hydra's override parser raises several types
            raise SweepFileError(f"{path}: variant {variant}: bad axis: {error}".splitlines()[0]) from None
        fixed = [
            f"{EXPERIMENT_GROUP}={body.experiment}",
            *common,
            *_as_list(body.get("overrides"), f"variants.{variant}.overrides"),
        ]
        grids.append((variant, fixed, parsed))
    placed = sorted({_override_key(o) for _, fixed, _ in grids for o in fixed} & set(PLACEMENT_KEYS))
    placed += sorted({_override_key(o) for o in extra_overrides} & set(PLACEMENT_KEYS))
    placed += sorted(set(axis_names) & set(PLACEMENT_KEYS))
    if placed:
        raise SweepFileError(
            f"{path}: {placed[0]} is set by deconcnn-sweep: every run's files go to OUT/<sweep>/{RUNS_DIR}/<run id>"
        )
    try:
        sizes = [math.prod(_axis_length(o) for o in parsed) for *_, parsed in grids]
    except SweepFileError as error:
        raise SweepFileError(f"{path}: bad axis: {error}") from None
    if sum(sizes) > max_runs:
        biggest = max(range(len(sizes)), key=sizes.__getitem__)
        raise SweepFileError(
            f"{path}: {sum(sizes):,} runs (variant {grids[biggest][0]}: {sizes[biggest]:,}), more than "
            f"--max-runs {max_runs:,}: refused before listing them"
        )
    source = sweep_source(data, extra_overrides, smoke)
    launcher = _as_list(spec.get("launcher"), "launcher")
    entries = recorded(str(name), source) if recorded else None
    if entries is not None:  # 50,000 runs: 0.6 CPU-s of expansion the manifest already holds
        listed = [RunSpec(e.run_id, e.variant, e.overrides, dict(e.params)) for e in entries]
        return Sweep(str(name), path, listed, launcher, [str(v) for v in variants], axis_names, source)
    runs: list[RunSpec] = []
    for variant, fixed, parsed in grids:
        try:
            combos = BasicSweeper.split_arguments(parsed, None)[0]
        except Exception as error:  # noqa: BLE001  Hydra's override parser raises several types
            raise SweepFileError(f"{path}: variant {variant}: bad axis: {error}".splitlines()[0]) from None
        model_keys = _model_keys([*fixed, *extra_overrides]) if smoke else None
        typed = axis_values(parsed)
        for combo in combos or [[]]:
            params = dict(typed[line] for line in combo)
            run_id = _run_id(template or default_template(params), variant, params)
            problem = run_id_problem(run_id)
            if problem:
                raise SweepFileError(f"{path}: variant {variant}: {problem}; change run_id or the axis value")
            overrides = (*fixed, *combo, *extra_overrides)
            if smoke:
                overrides = with_debug(overrides, SMOKE_DEBUG, model_keys)[0]
            runs.append(RunSpec(run_id, variant, overrides, params))
    seen: dict[str, RunSpec] = {}
    for run in runs:
        if run.run_id in seen:
            raise SweepFileError(f"{path}: two runs get the id {run.run_id}: make run_id name every axis")
        seen[run.run_id] = run
    return Sweep(str(name), path, runs, launcher, [str(v) for v in variants], axis_names, source)


def axis_values(axes: Sequence[Override]) -> dict[str, tuple[str, Any]]:
    """Every `key=value` line that BasicSweeper.split_arguments makes of these axes -> (key, typed
    value), from the axes already parsed: parsing each line again costs ~0.5 ms, and a 50,000-run
    sweep has a line per seed. A line is the key and Transformer.str of a swept element, as the
    sweeper writes it (each element is transformed once, so a shuffled sweep's order is moot). A
    number, bool or plain string element is its value; any other (a quoted string, a list, a dict:
    Hydra converts what they hold) is taken from the parsed line."""
    parse = ParsedOverrides()
    out: dict[str, tuple[str, Any]] = {}
    for axis in axes:
        key = axis.get_key_element()
        lines: list[tuple[str, Any]]
        if axis.is_sweep_override():
            lines = [(f"{key}={Transformer.str(element)}", element) for element in axis.sweep_iterator()]
        else:
            lines = [(f"{key}={axis.get_value_element_as_str()}", axis.value())]
        for line, element in lines:
            value = element if type(element) in (int, float, bool, str) else parse([line])[0].value()
            out[line] = (axis.key_or_group, value)
    return out


def _model_keys(overrides: Sequence[str]) -> set[str] | None:
    """The keys of the model config these overrides compose (None: they do not compose; validate_runs
    says why)."""
    try:
        return {str(k) for k in compose_run_config(list(overrides)).model}
    except Exception:  # noqa: BLE001
        return None


def default_template(params: dict[str, Any]) -> str:
    return "_".join(["{variant}", *(f"{key.rsplit('.', 1)[-1]}{{{key}}}" for key in params)])


def validate_runs(runs: Iterable[RunSpec], *, import_targets: bool = False) -> dict[str, str]:
    """Compose every run's config with Hydra and check it; raises SweepFileError on the first bad one.
    With `import_targets`, every `_target_` is imported and given only arguments it takes (this loads
    the training stack and the user's modules: a dry run and a launch do it, status never).
    Returns each run's data (deconcnn.runconfig.data_target).

    Composition is the slow part (~100 ms), so each distinct set of config-group choices is composed
    once and the value overrides are applied to a copy with Hydra's own override application. A run
    whose shape (deconcnn.sweep.shapes) was checked before is checked by its settings alone.
    """
    sources = {}
    parse = ParsedOverrides()
    settings_of = Settings()
    bases: dict[tuple[str, ...], DictConfig] = {}
    shapes: dict[tuple[Any, ...], Shape] = {}
    groups: set[str] | None = None
    imported: set[tuple[str, str, frozenset[str]]] = set()
    for run in runs:
        try:
            parsed = parse(run.overrides)
            if groups is None:
                probe = compose_run_config(list(run.base), hydra_config=True)
                groups = set(probe.hydra.runtime.choices.keys())
            # Group choices and hydra.* settings (a user's config directory) shape the composition.
            is_group = [o.key_or_group in groups or o.key_or_group.startswith("hydra.") for o in parsed]
            # One Override per line, in order; its input_line is that line (Optional only in its type).
            group_lines = tuple(line for line, g in zip(run.overrides, is_group) if g)
            values = [o for o, g in zip(parsed, is_group) if not g]
            settings = settings_of(values)
            # A shape: what is composed, every other override's line, and which keys its settings set.
            shape_key = (
                group_lines,
                *((o.key_or_group, None if o.key_or_group in settings else o.input_line) for o in values),
            )
            shape = shapes.get(shape_key)
            if shape is not None and shape.passes(settings):
                sources[run.run_id] = shape.source
                continue
            if group_lines not in bases:
                bases[group_lines] = compose_run_config(list(group_lines))
            cfg = copy.deepcopy(bases[group_lines])
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            cfg.run_dir = "/validation"  # the real one is set at launch; hydra's resolver is absent here
            OmegaConf.to_container(cfg, resolve=True)
            check_config(cfg)
            if import_targets:
                for key, (target, arguments) in targets(cfg).items():
                    if (key, target, arguments) not in imported:
                        check_target(key, target, arguments)
                        imported.add((key, target, arguments))
            sources[run.run_id] = data_target(cfg)
            if shape is None:
                shapes[shape_key] = Shape(cfg, sources[run.run_id], settings)
        except Exception as error:  # noqa: BLE001  any config error becomes one line naming the run
            raise SweepFileError(f"run {run.run_id}: {config_error_text(error)}") from None
    return sources


def data_notes(
    sweep: Sweep, runs: Sequence[RunSpec], sources: dict[str, str], named: Callable[[tuple[str, ...]], str]
) -> list[str]:
    """A line per variant whose runs train on other data than its experiment names (synthetic data
    under a CIFAR-10 experiment, say): such a run must never pass unsaid. `named`: the data source
    a run's base (RunSpec.base) composes."""
    notes = []
    for variant in sweep.variants:
        mine = [r for r in runs if r.variant == variant]
        if not mine:
            continue
        experiment = next(o for o in mine[0].overrides if _override_key(o) == EXPERIMENT_GROUP)
        data = named(mine[0].base)
        used = sorted({sources[r.run_id] for r in mine} - {data})
        if used:
            notes.append(
                f"{variant}: its runs train on {', '.join(u.rsplit('.', 1)[-1] for u in used)}, although "
                f"its experiment ({experiment.split('=', 1)[1]}) names {data.rsplit('.', 1)[-1]}"
            )
    return notes


@dataclass
class LaunchPlan:
    """The runs a command works on, validated, and where they live."""

    sweep: Sweep
    runs: list[RunSpec]
    sweep_dir: SweepDir
    notes: list[str] = field(default_factory=list)  # what a user must be told before anything runs
    import_targets: bool = False
    validated: bool = True  # False: plan(relaunch=True); the launch validates what it submits
    #: The validation record read (validations) and added to, for remember_validation.
    checked: Validations | None = None
    #: plan(relaunch=True): the sweep directory's manifest as read then (SweepDir.written, Manifest),
    #: for the launch to use unless the files changed meanwhile.
    read: tuple[tuple[tuple[int, ...], ...], Manifest | None] | None = None

    def validations(self) -> Validations | None:
        """With `import_targets`, what passed in this sweep directory in the same environment
        (deconcnn.sweep.validated), read once; None without."""
        if self.checked is None and self.import_targets:
            self.checked = Validations(self.sweep_dir.path, self._config_lines())
        return self.checked

    def launcher_settings(self, backend_cls: type[Backend]) -> dict[str, Any]:
        """The backend's settings for the sweep (Backend.settings), taken from the validation record
        where they were composed and passed in the same environment: a relaunch composes nothing."""
        base, launcher = self.sweep.runs[0].base, self.sweep.launcher_overrides
        known = self.validations()
        key = launcher_key(backend_cls.kind, base, launcher)
        if known is not None and key in known.launchers:
            return known.launchers[key]
        settings = backend_cls.settings(base, launcher)
        if known is not None:
            known.add_launcher(key, settings)
        return settings

    def validate(self, runs: Sequence[RunSpec]) -> None:
        """Compose and check these runs' configs (validate_runs) and note the data they train on. With
        `import_targets`, a run that passed in this sweep directory in the same environment
        (deconcnn.sweep.validated) is taken as it passed: a relaunch imports no training stack."""
        known = self.validations()
        keys = {r.run_id: overrides_key(r.overrides) for r in runs} if known else {}
        sources = {r.run_id: known.sources[keys[r.run_id]] for r in runs if known and keys[r.run_id] in known.sources}
        todo = [r for r in runs if r.run_id not in sources]
        checked = validate_runs(todo, import_targets=self.import_targets) if todo else {}
        sources.update(checked)

        def named(base: tuple[str, ...]) -> str:
            key = overrides_key(base)
            if known is None or key not in known.named:
                data = data_target(compose_run_config(list(base)))
                if known is None:
                    return data
                known.add_named(key, data)
            return known.named[key]

        self.notes = data_notes(self.sweep, runs, sources, named)
        if known is not None:
            known.add_sources((keys[r.run_id], checked[r.run_id]) for r in todo)
        self.validated = True

    def _config_lines(self) -> list[str]:
        """The override lines that name config directories, from a run of each variant (--config-dir
        goes to every run; a sweep file sets it per variant, if at all)."""
        one_per_variant = {r.variant: r for r in self.sweep.runs}.values()
        return sorted({o for r in one_per_variant for o in r.overrides if _override_key(o) == SEARCHPATH_KEY})

    def remember_validation(self) -> None:
        """Record what validate checked (deconcnn.sweep.validated) in the sweep directory, once it exists."""
        if self.checked is not None and self.checked.added:
            self.checked.save()

    def dry_run_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "run_id": r.run_id,
                "variant": r.variant,
                "overrides": list(r.overrides),
                "dir": str(self.sweep_dir.run_dir(r.run_id)),
            }
            for r in self.runs
        ]


def searchpath_override(config_dirs: Sequence[str | Path]) -> list[str]:
    """`--config-dir DIR`: DIR joins Hydra's config search path of every run (its model/, data/,
    experiment/ ... options beside the package's), through the run's own overrides, so the run's
    process, its check and its relaunch all compose the same config."""
    paths = []
    for config_dir in config_dirs:
        path = Path(config_dir).expanduser().resolve()
        if not path.is_dir():
            raise SweepFileError(f"--config-dir {config_dir}: no such directory")
        # A quoted Hydra string: backslashes and quotes escaped, any other character as it is.
        paths.append("'file://" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'")
    return [f"{SEARCHPATH_KEY}=[{','.join(paths)}]"] if paths else []


def plan(
    sweep_file: str | Path,
    *,
    out: str | Path = DEFAULT_OUT,
    smoke: bool = False,
    only: str | None = None,
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | Path] = (),
    import_targets: bool = False,
    relaunch: bool = False,
    max_runs: int = MAX_RUNS,
) -> LaunchPlan:
    """Expand and validate every run; raises SweepFileError before anything is written. With
    `relaunch`, a sweep already launched (its directory has a manifest) is only expanded: the
    launch validates the runs it submits (a relaunch of 5% of a sweep composes 5% of its configs).

    Command-line overrides for the launcher (`hydra.launcher.x=`, `+hydra.launcher.x=`,
    `hydra/launcher=`) go to the launcher, every other one to every run; `config_dirs` join every
    run's config search path; `import_targets`: see validate_runs; `max_runs`: see load_sweep.
    """
    launcher = [o for o in overrides if is_launcher_override(o)]
    run_overrides = [*searchpath_override(config_dirs), *(o for o in overrides if not is_launcher_override(o))]
    read = None

    def recorded(name: str, source: str) -> Sequence[RunEntry] | None:
        """A relaunch of an unchanged source takes its runs from the manifest (read once, here)."""
        nonlocal read
        sd = SweepDir(Path(out) / sweep_dir_name(name, smoke))
        read = (sd.written(), sd.read_manifest())
        manifest = read[1]
        return list(manifest.runs.values()) if manifest and manifest.grid_source == source else None

    known = recorded if relaunch else None
    with gc_paused():  # 50,000 runs listed (or taken from the manifest): no composition yet
        sweep = load_sweep(sweep_file, run_overrides, smoke=smoke, max_runs=max_runs, recorded=known)
    sweep.launcher_overrides += launcher
    sweep.name = sweep_dir_name(sweep.name, smoke)
    runs = sweep.runs
    if only:
        runs = [r for r in runs if fnmatch.fnmatchcase(r.run_id, only) or r.variant == only]
        if not runs:
            raise SweepFileError(f"--only {only!r} matches no run (variants: {', '.join(sweep.variants)})")
    launch_plan = LaunchPlan(sweep, runs, SweepDir(Path(out) / sweep.name), import_targets=import_targets, read=read)
    if relaunch and launch_plan.sweep_dir.exists():
        launch_plan.validated = False
    else:
        launch_plan.validate(runs)
    return launch_plan
