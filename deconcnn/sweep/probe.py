"""deconcnn-sweep probe-resources: how many runs of each variant to pack on one GPU.

For each variant of a sweep (its first run stands for all: the axes change learning rate, weight
decay and seed, not the cost of a step), k = 1, 2, 3, ... concurrent training processes of that
run's real config are started together (deconcnn.training.throughput, one process each, the CPU
cores split between them as a packed task splits them) and each times N optimizer steps after a
warm-up, all inside one overlapping window. Per k the probe records aggregate and per-run
samples/s, peak memory per process (GPU: the process's footprint, i.e. reserved memory plus CUDA
context; CPU: peak RSS), CPU time / wall time, and OOM or failure.

k stops growing at OOM or failure, at the memory limit (MEMORY_FRACTION of the device; of host
RAM without a GPU), when aggregate throughput rises by less than MIN_GAIN over the best smaller
k, or at --max-workers. The choice (`choose_k`, a plain function of the measurements) is the
smallest k reaching TARGET_FRACTION of the best aggregate throughput among the k that ran within
the memory limit. probe.json holds the measurements and the choice; `launch` reads the choice
with `read_probe_choice`. A PNG plots aggregate throughput and memory against k.

No torch here: the measuring is done by worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog.atomic import write_json_atomic

PROBE_VERSION = 1
MEMORY_FRACTION = 0.85   # never choose a k whose memory exceeds this share of the device (or RAM)
TARGET_FRACTION = 0.90   # the smallest k reaching this share of the best aggregate throughput
MIN_GAIN = 0.05          # stop when k adds less than this to the best aggregate throughput so far
WORKER_MODULE = "deconcnn.training.throughput"
MB = 2**20


class ProbeFileError(ValueError):
    """probe.json is unreadable, corrupt, or measured for other variants."""


class ProbeFailed(RuntimeError):
    """The probe could not measure (its SLURM job failed, say)."""


@dataclass(frozen=True)
class ProbeSettings:
    steps: int = 50
    warmup: int = 10
    max_workers: int = 8
    trial_timeout_s: float = 1800.0
    memory_fraction: float = MEMORY_FRACTION
    target_fraction: float = TARGET_FRACTION
    min_gain: float = MIN_GAIN


@dataclass(frozen=True)
class VariantSpec:
    """The run that stands for a variant."""

    variant: str
    run_id: str
    overrides: tuple[str, ...]


# ---------------------------------------------------------------- the rules, on recorded measurements


def within_memory(m: dict[str, Any], fraction: float = MEMORY_FRACTION) -> bool:
    """True when the trial's memory (device, and host) stayed within `fraction` of its limit."""
    for used, limit in ((m.get("memory_total_mb"), m.get("memory_limit_mb")),
                        (m.get("host_memory_mb"), m.get("host_memory_limit_mb"))):
        if used is not None and limit and used > fraction * limit:
            return False
    return True


def choose_k(measurements: Sequence[dict[str, Any]], *, target_fraction: float = TARGET_FRACTION,
             memory_fraction: float = MEMORY_FRACTION) -> dict[str, Any]:
    """The smallest k whose aggregate samples/s reaches `target_fraction` of the best k's, among the
    k that ran without OOM or failure and within `memory_fraction` of the memory limit.

    Returns {"k", "ok", "reason"}; ok is False (and k 1, the unpacked default) when no k qualifies.
    """
    usable = [m for m in measurements if m.get("status") == "ok" and m.get("aggregate_samples_per_s")]
    eligible = [m for m in usable if within_memory(m, memory_fraction)]
    if not eligible:
        first = min(measurements, key=lambda m: m["k"], default=None)
        why = "nothing was measured" if first is None else (
            f"k={first['k']} {first.get('status')}: {first.get('error') or 'over the memory limit'}"
            if first.get("status") != "ok" else f"k={first['k']} is over the memory limit")
        return {"k": 1, "ok": False, "reason": f"no k ran within the limits ({why}); defaulting to 1"}
    best = max(eligible, key=lambda m: m["aggregate_samples_per_s"])
    threshold = target_fraction * best["aggregate_samples_per_s"]
    chosen = min((m for m in eligible if m["aggregate_samples_per_s"] >= threshold), key=lambda m: m["k"])
    reason = (f"k={chosen['k']}: {chosen['aggregate_samples_per_s']:.1f} samples/s, "
              f"{chosen['aggregate_samples_per_s'] / best['aggregate_samples_per_s']:.0%} of the best "
              f"(k={best['k']}, {best['aggregate_samples_per_s']:.1f})")
    skipped = sorted(m["k"] for m in usable if m not in eligible)
    if skipped:
        reason += f"; over {memory_fraction:.0%} of memory: k={','.join(map(str, skipped))}"
    return {"k": chosen["k"], "ok": True, "reason": reason}


def stop_reason(measurements: Sequence[dict[str, Any]], *, max_workers: int,
                memory_fraction: float = MEMORY_FRACTION, min_gain: float = MIN_GAIN) -> str | None:
    """Why not to measure k+1 after the last measurement, or None to go on."""
    last = measurements[-1]
    k = last["k"]
    if last["status"] == "oom":
        return f"out of memory at k={k}"
    if last["status"] != "ok":
        return f"k={k} {last['status']}"
    if not within_memory(last, memory_fraction):
        return f"memory limit: k={k} is over {memory_fraction:.0%} ({_memory_text(last)})"
    earlier = [m["aggregate_samples_per_s"] for m in measurements[:-1]
               if m["status"] == "ok" and m.get("aggregate_samples_per_s")]
    if earlier and last["aggregate_samples_per_s"] < (1 + min_gain) * max(earlier):
        gain = last["aggregate_samples_per_s"] / max(earlier) - 1
        return f"throughput stopped rising: {gain:+.0%} at k={k} (< +{min_gain:.0%})"
    if k >= max_workers:
        return f"--max-workers {max_workers} reached"
    grown = {**last, **{key: last[key] * (k + 1) / k for key in ("memory_total_mb", "host_memory_mb")
                        if last.get(key) is not None}}
    if not within_memory(grown, memory_fraction):
        return f"memory limit: k={k + 1} would be over {memory_fraction:.0%} ({_memory_text(grown)})"
    return None


def _memory_text(m: dict[str, Any]) -> str:
    parts = []
    for used, limit, label in (("memory_total_mb", "memory_limit_mb", "device"),
                               ("host_memory_mb", "host_memory_limit_mb", "host")):
        if m.get(used) is not None and m.get(limit):
            parts.append(f"{label} {m[used]:.0f} of {m[limit]:.0f} MB")
    return ", ".join(parts)


# ---------------------------------------------------------------- reading the file (launch)


def read_probe_choice(probe_path: str | Path, variants: set[str] | Sequence[str]) -> dict[str, int]:
    """Runs per GPU for each variant, as probe.json chose; ProbeFileError for a corrupt file or one
    that has no choice for some variant."""
    path = Path(probe_path)
    rerun = "rerun `deconcnn-sweep probe-resources` for this sweep (or pass --workers-per-gpu)"
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ProbeFileError(f"cannot read probe file {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProbeFileError(f"probe file {path} is corrupt ({error}); {rerun}") from None
    measured = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(measured, dict):
        raise ProbeFileError(f"probe file {path} is corrupt (no 'variants' mapping); {rerun}")
    missing = sorted(set(variants) - set(measured))
    if missing:
        raise ProbeFileError(f"probe file {path} was measured for variants {sorted(measured)}, not for "
                             f"{missing} of this sweep; {rerun}")
    choice = {}
    for variant in variants:
        k = (measured[variant].get("choice") or {}).get("k") if isinstance(measured[variant], dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ProbeFileError(f"probe file {path} is corrupt (variant {variant}: no choice k >= 1); {rerun}")
        choice[variant] = k
    return choice


# ---------------------------------------------------------------- this machine's resources


def cpu_budget() -> int:
    """CPUs this process may use: the SLURM allocation, else its affinity mask."""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if slurm_cpus and slurm_cpus.isdigit():
        return int(slurm_cpus)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_memory_limit_mb() -> float | None:
    """RAM this process may use: the least of MemTotal, its cgroup's memory.max and SLURM's --mem."""
    limits: list[float] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) / 1024)
    except OSError:
        pass
    try:
        value = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if value.isdigit():
            limits.append(int(value) / MB)
    except OSError:
        pass
    slurm_mem = os.environ.get("SLURM_MEM_PER_NODE")
    if slurm_mem and slurm_mem.isdigit() and int(slurm_mem) > 0:
        limits.append(float(slurm_mem))
    return min(limits) if limits else None


# ---------------------------------------------------------------- one trial: k workers at once


def _worker_argv(spec: VariantSpec, settings: ProbeSettings, sync: Path, index: int) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, "--steps", str(settings.steps), "--warmup",
            str(settings.warmup), "--sync", str(sync), "--index", str(index),
            "--run-dir", str(sync / f"w{index}"), "--out", str(sync / f"result.{index}.json"),
            "--", *spec.overrides]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_trial(spec: VariantSpec, k: int, settings: ProbeSettings, scratch: Path, gpu: str | None,
              cpus: int) -> list[dict[str, Any]]:
    """Start k workers of `spec` together, wait for them; one result dict per worker."""
    sync = scratch / spec.variant / f"k{k}"
    sync.mkdir(parents=True)
    threads = str(max(1, cpus // k))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    procs = []
    for i in range(k):
        with open(sync / f"worker.{i}.log", "wb") as log:
            procs.append(subprocess.Popen(_worker_argv(spec, settings, sync, i), stdout=log,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True))
    results = [sync / f"result.{i}.json" for i in range(k)]
    deadline = time.monotonic() + settings.trial_timeout_s
    flags: set[str] = set()
    timed_out = False

    def flag(name: str) -> None:
        if name not in flags:
            (sync / name).touch()
            flags.add(name)

    try:
        while any(p.poll() is None for p in procs):
            if "go" not in flags:
                if any(p.poll() is not None for p in procs):
                    flag("abort")  # a worker died before the timed window: the others stop waiting
                elif all((sync / f"ready.{i}").exists() for i in range(k)):
                    flag("go")
            elif all(r.exists() or p.poll() is not None for r, p in zip(results, procs)):
                flag("stop")
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        flag("stop")
        for p in procs:
            if p.poll() is None:
                try:
                    p.wait(timeout=0 if timed_out else 120)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    out = []
    for i, (p, result) in enumerate(zip(procs, results)):
        try:
            data = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError):
            data = {"index": i, "status": "failed", "error": None}
        if data.get("status") != "ok":
            if timed_out and data.get("status") == "failed" and data.get("error") is None:
                data.update(status="timeout", error=f"no result within {settings.trial_timeout_s:g} s")
            elif p.returncode == -signal.SIGKILL and not timed_out:
                data.update(status="oom", error="killed by SIGKILL (the kernel's OOM killer?)")
            elif data.get("error") is None:
                data["error"] = f"exit {p.returncode}"
            data["log_tail"] = _log_tail(sync / f"worker.{i}.log")
        data["exit_code"] = p.returncode
        out.append(data)
    return out


def summarize_trial(k: int, workers: list[dict[str, Any]], host_limit_mb: float | None) -> dict[str, Any]:
    """One row of the probe table from k worker results."""
    statuses = [w.get("status") for w in workers]
    ok = [w for w in workers if w.get("status") == "ok"]
    if "oom" in statuses:
        status = "oom"
    elif all(s == "ok" for s in statuses):
        status = "ok"
    elif "timeout" in statuses:
        status = "timeout"
    else:
        status = "failed"
    # A worker aborted because a sibling died is not the cause: report the first real error.
    culprit = next((w for w in workers if w.get("status") not in ("ok", "aborted")), None) or \
        next((w for w in workers if w.get("status") != "ok"), None)
    row: dict[str, Any] = {"k": k, "status": status, "error": culprit.get("error") if culprit else None,
                           "log_tail": culprit.get("log_tail") if culprit else None}
    device = next((w["device"] for w in workers if w.get("device")), None)
    if status == "ok":
        per_run = [w["samples_per_s"] for w in ok]
        rss = [w["peak_rss_mb"] for w in ok]
        row.update(
            aggregate_samples_per_s=sum(per_run), per_run_samples_per_s=per_run,
            mean_per_run_samples_per_s=sum(per_run) / len(per_run),
            cpu_util=[w["cpu_util"] for w in ok], threads_per_run=ok[0].get("threads"),
            wall_s=max(w["wall_s"] for w in ok), peak_rss_mb=max(rss),
            host_memory_mb=sum(rss), host_memory_limit_mb=host_limit_mb,
        )
        if device and device.get("kind") == "cuda":
            reserved = [w["max_reserved_mb"] for w in ok]
            device_used = max(w["device_used_mb"] for w in ok)
            smi = [w.get("process_used_mb") for w in ok]
            # nvidia-smi's per-process figure is the whole footprint; without it, a CUDA context is
            # what the device holds beyond the k caching allocators, split evenly.
            context = max(0.0, (device_used - sum(reserved)) / k)
            per_process = [s if s is not None else r + context for s, r in zip(smi, reserved)]
            row.update(memory_per_process_mb=max(per_process), max_reserved_mb=max(reserved),
                       context_mb=None if None in smi else max(s - r for s, r in zip(smi, reserved)),
                       memory_total_mb=device_used, memory_limit_mb=device["memory_total_mb"],
                       memory_source="nvidia-smi per process" if None not in smi else
                       "reserved + (device used - reserved) / k")
        else:
            row.update(memory_per_process_mb=max(rss), memory_total_mb=sum(rss),
                       memory_limit_mb=host_limit_mb, memory_source="peak RSS")
    return row


# ---------------------------------------------------------------- the probe


def gpu_for_probe() -> str | None:
    from deconcnn.sweep.executors import visible_gpus

    gpus = visible_gpus()
    return gpus[0] if gpus else None


def measure(specs: Sequence[VariantSpec], settings: ProbeSettings,
            report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Probe every variant on this machine (one GPU, or the CPUs); the measurements and choices."""
    report = report or (lambda line: print(line, flush=True))
    gpu, cpus, host_limit = gpu_for_probe(), cpu_budget(), host_memory_limit_mb()
    device: dict[str, Any] | None = None
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="deconcnn-probe-") as tmp:
        for spec in specs:
            rows: list[dict[str, Any]] = []
            stopped = None
            for k in range(1, settings.max_workers + 1):
                report(f"{spec.variant}: k={k} ({spec.run_id}) ...")
                workers = run_trial(spec, k, settings, Path(tmp), gpu, cpus)
                device = device or next((w["device"] for w in workers if w.get("device")), None)
                rows.append(summarize_trial(k, workers, host_limit))
                report(f"{spec.variant}: {format_row(rows[-1])}")
                stopped = stop_reason(rows, max_workers=settings.max_workers,
                                      memory_fraction=settings.memory_fraction, min_gain=settings.min_gain)
                if stopped:
                    break
            choice = choose_k(rows, target_fraction=settings.target_fraction,
                              memory_fraction=settings.memory_fraction)
            report(f"{spec.variant}: stopped ({stopped}); choice {choice['reason']}")
            variants[spec.variant] = {"run_id": spec.run_id, "overrides": list(spec.overrides),
                                      "measurements": rows, "stopped": stopped, "choice": choice}
    return {
        "device": {**(device or {"kind": "unknown", "name": None, "memory_total_mb": None}),
                   "host": socket.gethostname(), "cpus": cpus, "host_memory_limit_mb": host_limit,
                   "gpu_index": gpu},
        "settings": asdict(settings),
        "variants": variants,
    }


def format_row(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"k={row['k']} {row['status'].upper()}: {(row.get('error') or '').splitlines()[0][:160]}"
    cpu = sum(row["cpu_util"]) / len(row["cpu_util"])
    return (f"k={row['k']} {row['aggregate_samples_per_s']:8.1f} samples/s aggregate, "
            f"{row['mean_per_run_samples_per_s']:7.1f} per run, "
            f"{row['memory_per_process_mb']:6.0f} MB per process ({row['memory_source']}), "
            f"CPU {cpu:.0%} per process")


def representatives(runs: Sequence[Any]) -> list[VariantSpec]:
    """The first run of each variant, in the sweep file's order."""
    seen: dict[str, VariantSpec] = {}
    for run in runs:
        seen.setdefault(run.variant, VariantSpec(run.variant, run.run_id, tuple(run.overrides)))
    return list(seen.values())


def probe_resources(sweep_file: str | Path, *, executor: str = "auto", settings: ProbeSettings = ProbeSettings(),
                    out: str | Path | None = None, root: str | Path | None = None, only: str | None = None,
                    overrides: Sequence[str] = (), progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Probe a sweep's variants here or in one SLURM job; write probe.json (+ .png); return both."""
    from deconcnn.sweep.launch import DEFAULT_OUT, PROBE_FILE, launcher_config, plan, resolve_executor

    if settings.max_workers < 1 or settings.steps < 1 or settings.warmup < 1:
        raise ProbeFailed("--max-workers, --steps and --warmup must be >= 1")
    launch_plan = plan(sweep_file, out=root or DEFAULT_OUT, only=only, overrides=overrides)
    specs = representatives(launch_plan.runs)
    kind = resolve_executor(executor)
    path = Path(out) if out else launch_plan.sweep_dir.path / PROBE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"version": PROBE_VERSION, "sweep": launch_plan.sweep.name,
              "sweep_file": str(Path(sweep_file).resolve()), "fingerprint": launch_plan.sweep.fingerprint(),
              "overrides": list(overrides), "executor": kind, "created": time.time()}
    console = _console(progress)
    if kind == "local":
        data = measure(specs, settings, report=console)
    else:
        data = _measure_on_slurm(specs, settings, launcher_config(launch_plan.sweep),
                                 launch_plan.sweep_dir.path / "slurm" / "probe", launch_plan.sweep.name,
                                 header, console)
    result = {**header, **data}
    write_json_atomic(path, result)
    plot_probe(result, path.with_suffix(".png"))
    return path, result


def _console(enabled: bool) -> Callable[[str], None]:
    from rich.console import Console

    console = Console(stderr=True, quiet=not enabled, highlight=False, soft_wrap=True)
    return lambda line: console.print(line, markup=False)


def _measure_on_slurm(specs: Sequence[VariantSpec], settings: ProbeSettings, launcher: dict[str, Any],
                      folder: Path, name: str, header: dict[str, Any],
                      console: Callable[[str], None]) -> dict[str, Any]:
    """One submitit job holding one GPU (the sweep's own launcher settings) runs `measure`."""
    import submitit

    from deconcnn.sweep.executors import submitit_parameters

    init, params = submitit_parameters(launcher, f"deconcnn-probe-{name}")
    params.pop("slurm_array_parallelism", None)
    params["gpus_per_node"] = min(1, int(params.get("gpus_per_node") or 0))  # the probe measures ONE GPU
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
    executor.update_parameters(**params)
    job = executor.submit(measure, list(specs), settings, None)
    header["job_id"] = job.job_id
    console(f"probe submitted as SLURM job {job.job_id} (log: {job.paths.stdout})")
    last = None
    while not job.done():
        state = job.state
        if state != last:
            console(f"job {job.job_id}: {state}")
            last = state
        time.sleep(5)
    try:
        return job.result()
    except Exception as error:  # submitit's FailedJobError carries the remote traceback
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise ProbeFailed(f"the probe's SLURM job {job.job_id} failed: {lines[-1] if lines else error} "
                          f"(log: {job.paths.stdout})") from None


# ---------------------------------------------------------------- the plot


def plot_probe(result: dict[str, Any], path: Path) -> Path:
    """Aggregate samples/s against k per variant (chosen k circled, OOM/failure crossed) and
    memory against k as a share of its limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (variant, entry) in enumerate(result["variants"].items()):
        color = f"C{i}"
        ok = [m for m in entry["measurements"] if m["status"] == "ok"]
        ax_tp.plot([m["k"] for m in ok], [m["aggregate_samples_per_s"] for m in ok], "o-", color=color,
                   label=variant)
        mem = [m for m in ok if m.get("memory_limit_mb")]
        ax_mem.plot([m["k"] for m in mem], [100 * m["memory_total_mb"] / m["memory_limit_mb"] for m in mem],
                    "o-", color=color, label=variant)
        for m in entry["measurements"]:
            if m["status"] != "ok":
                ax_tp.plot([m["k"]], [0], "x", color=color, markersize=10, mew=2)
                ax_tp.annotate(m["status"].upper(), (m["k"], 0), textcoords="offset points", xytext=(4, 6),
                               color=color, fontsize=8)
        chosen = entry["choice"]["k"]
        hit = [m for m in ok if m["k"] == chosen]
        if entry["choice"].get("ok") and hit:
            ax_tp.plot([chosen], [hit[0]["aggregate_samples_per_s"]], "o", markersize=14, mfc="none",
                       color=color, mew=2)
    settings = result.get("settings", {})
    ax_mem.axhline(100 * settings.get("memory_fraction", MEMORY_FRACTION), color="grey", ls="--",
                   label="limit")
    device = result.get("device", {})
    ax_tp.set(xlabel="concurrent runs k", ylabel="aggregate samples/s",
              title=f"throughput on {device.get('name') or device.get('kind')} (circle: chosen k)")
    ax_mem.set(xlabel="concurrent runs k", ylabel="% of limit",
               title="memory of all k runs (GPU: device; CPU: RAM)")
    for ax in (ax_tp, ax_mem):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_tp.set_ylim(bottom=0)
    ax_mem.set_ylim(bottom=0)
    fig.suptitle(f"probe of sweep {result.get('sweep')}: {settings.get('steps')} timed steps after "
                 f"{settings.get('warmup')} warm-up, {device.get('cpus')} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_table(result: dict[str, Any]) -> Any:
    """A rich table of every measurement, the chosen k marked."""
    from rich.table import Table

    device = result.get("device", {})
    table = Table(title=f"probe on {device.get('name')} ({device.get('kind')}, {device.get('cpus')} CPUs)")
    for column in ("variant", "k", "status", "aggregate samples/s", "per run samples/s",
                   "memory/process MB", "all k MB", "limit MB", "CPU/process"):
        table.add_column(column, justify="right" if column not in ("variant", "status") else "left")
    for variant, entry in result["variants"].items():
        for m in entry["measurements"]:
            mark = " *" if m["k"] == entry["choice"]["k"] and entry["choice"].get("ok") else ""
            if m["status"] == "ok":
                cpu = sum(m["cpu_util"]) / len(m["cpu_util"])
                table.add_row(variant, f"{m['k']}{mark}", "ok", f"{m['aggregate_samples_per_s']:.1f}",
                              f"{m['mean_per_run_samples_per_s']:.1f}", f"{m['memory_per_process_mb']:.0f}",
                              f"{m['memory_total_mb']:.0f}", f"{m['memory_limit_mb'] or 0:.0f}", f"{cpu:.0%}")
            else:
                table.add_row(variant, str(m["k"]), m["status"], "", "", "", "", "", "")
    return table
