"""The package's shape: dependencies point down, no module imports another in a cycle, the layers
that must not load the training stack do not (statically, every import in every function counts;
and at run time, for the sweep layer), and no code outside deconcnn.backends names a backend's kind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deconcnn"
# Which top-level parts of the package each part may import (besides itself).
ALLOWED = {
    "runlog": set(),
    "metrics": set(),
    "runconfig": set(),
    "callbacks": {"metrics", "runlog"},
    "training": {"callbacks", "metrics", "runlog", "runconfig"},
    "train": {"training", "callbacks", "runlog", "runconfig"},
    "backends": {"runlog", "runconfig"},
    "sweep": {"backends", "runlog", "runconfig"},
    "analysis": {"runlog"},  # never the sweep layer: it reads what runs recorded, asks no scheduler
    "cli": {"backends", "sweep", "analysis", "runlog"},
}
TRAINING_STACK = ("torch", "pytorch_lightning", "lightning_fabric", "backpack", "hessian_eigenthings")
SCHEDULERS = ("submitit", "hydra_plugins.hydra_submitit_launcher", "deconcnn.sweep", "deconcnn.backends")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module name an import statement in the file names (top-level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {n for n in imports(p) if n in mods and n != m and not m.startswith(f"{n}.")} for m, p in mods.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_dependencies_point_down():
    wrong = [
        (m, n)
        for m, targets in graph().items()
        for n in targets
        if part(n) != part(m) and part(n) not in ALLOWED[part(m)]
    ]
    assert not wrong, wrong


def test_no_import_cycles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("layer", ["backends", "sweep", "analysis", "runlog"])
def test_layers_without_the_training_stack_never_import_it(layer):
    offenders = {
        m: sorted(n for n in imports(p) if n.split(".")[0] in TRAINING_STACK)
        for m, p in modules().items()
        if part(m) == layer
    }
    assert not {m: n for m, n in offenders.items() if n and m != "deconcnn.runlog.metrics_log"}, offenders


def test_importing_the_cli_and_the_sweep_layer_loads_no_torch():
    code = (
        "import sys, deconcnn.cli, deconcnn.sweep.launch, deconcnn.sweep.status, deconcnn.sweep.cancel; "
        f"bad = [m for m in {TRAINING_STACK!r} if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_training_app_loads_the_training_stack_only_once_hydra_has_composed_the_config():
    """A bad override or `--cfg job` is answered before torch and Lightning load (~5 CPU-s)."""
    code = f"import sys, deconcnn.train; bad = [m for m in {TRAINING_STACK!r} if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_analysis_imports_no_scheduler():
    """collect, report and analyze read the states runs recorded: no import can reach a scheduler."""
    offenders = {
        m: sorted(n for n in imports(p) if any(n == s or n.startswith(f"{s}.") for s in SCHEDULERS))
        for m, p in modules().items()
        if part(m) == "analysis"
    }
    assert not {m: n for m, n in offenders.items() if n}, offenders
    code = (
        "import sys, deconcnn.analysis.collect, deconcnn.analysis.report, deconcnn.analysis.analyze, "
        "deconcnn.analysis.compare; "
        f"bad = [m for m in sys.modules if m.startswith({SCHEDULERS!r})]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


#: A string equal to a kind that is not one: the name of the folder submitit writes into.
NOT_A_KIND = {("deconcnn.runlog.layout", "SLURM_DIR")}


def test_no_code_outside_the_backends_names_a_backend_kind():
    """A backend is one class plus an entry point: nothing else compares with, or keys on, its kind
    (`"slurm"`, `"local"`), so a new backend needs no edit elsewhere."""
    from deconcnn.backends.registry import kinds

    assert {"local", "slurm"} <= set(kinds())  # what this test looks for: the installed kinds
    found = []
    for module, path in modules().items():
        if part(module) == "backends":
            continue
        tree = ast.parse(path.read_text())
        named = {
            (node.targets[0].id, id(node.value))
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        }
        allowed = {value for name, value in named if (module, name) in NOT_A_KIND}
        found += [
            f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in kinds() and id(node) not in allowed
        ]
    assert not found, found


#: Keys of the sweep's files that also name other things (a probe measurement's status, a table's
#: run_id column, a sweep file's overrides and variants): the scan looks for the other keys.
SHARED_WORDS = {
    *("status", "run_id", "variant", "variants", "runs", "overrides", "params", "axes", "sweep", "sweep_file"),
    *("error", "time", "log", "data", "host", "pid", "id", "limit", "pack", "note", "created", "executor"),
    *("job_id", "fingerprint", "code_version"),
}
#: Record keys spelled outside deconcnn.runlog.records, and why.
RECORD_KEYS_ELSEWHERE = {
    # runs.parquet's columns are named after the run.json fields they hold (read through RunStatus)
    **{key: {"deconcnn.analysis.collect"} for key in ("attempt", "start_time", "end_time", "slurm_job_id")},
    "diverged_step": {"deconcnn.analysis.collect", "deconcnn.analysis.report"},  # a runs.parquet column
    "last_step": {"deconcnn.analysis.collect", "deconcnn.callbacks.curvature_monitor"},  # the monitor's own state
}


def test_only_the_records_module_spells_the_keys_of_the_sweep_s_files():
    """manifest.json, run.json and process.json are read and written through deconcnn.runlog.records:
    a field is added in one place. Their keys are taken from what the records write."""
    from deconcnn.runlog import records as r

    written = (
        r.Manifest("s", None, None, None, 0.0, (), (), {}),
        r.RunEntry("r", "v", (), {}),
        r.RunSubmission("i", "k", 0.0, None, None, (), None),
        r.LaunchRecord("i", 0.0, "k", (), note="n", deferred=r.Deferred(1, "x"), recovered="r"),
        r.ProcessRecord("h", 1, 2.0, 3.0, "s"),
        r.RunStatus("running"),
    )
    keys = {key for record in written for key in record.to_json()} - SHARED_WORDS
    assert {"submissions", "attempts", "submission_id", "pid_start", "metrics_log_bytes"} <= keys
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for module, path in modules().items()
        if module != "deconcnn.runlog.records"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and node.value in keys
        and module not in RECORD_KEYS_ELSEWHERE.get(node.value, ())
    ]
    assert not found, found
