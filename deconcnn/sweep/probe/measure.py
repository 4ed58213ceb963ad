"""The probe's measuring, on the machine that holds the GPU: k = 1, 2, ... workers of each variant at
once (deconcnn.training.throughput), the rules deciding when to stop.

It runs as one job through the sweep's executor (local or SLURM, the same path):

    python -m deconcnn.sweep.probe.measure --request REQUEST.json --out RESULT.json

printing a line per trial (the waiting command shows them) and writing the result atomically.
SIGTERM or SIGINT (`probe-resources` stopped, scancel) ends it with the workers of the trial under
way killed first: each is in its own session, so no signal to the probe's group reaches them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deconcnn.backends import Command, preloaded
from deconcnn.backends.pack import THROUGHPUT_MODULE
from deconcnn.backends.processes import torch_threads
from deconcnn.runlog.atomic import write_json_atomic
from deconcnn.sweep.probe.rules import MB, ProbeSettings, VariantSpec, choose_k, stop_reason

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


def _worker(spec: VariantSpec, settings: ProbeSettings, sync: Path, index: int) -> Command:
    args = (
        "--steps",
        str(settings.steps),
        "--warmup",
        str(settings.warmup),
        "--sync",
        str(sync),
        "--index",
        str(index),
        "--run-dir",
        str(sync / f"w{index}"),
        "--out",
        str(sync / f"result.{index}.json"),
        "--",
        *spec.overrides,
    )
    return Command(f"worker.{index}", THROUGHPUT_MODULE, args, str(sync))


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_trial(
    spec: VariantSpec, k: int, settings: ProbeSettings, scratch: Path, gpu: str | None, cpus: int
) -> list[dict[str, Any]]:
    """Start k workers of `spec` together, wait for them; one result dict per worker."""
    sync = scratch / spec.variant / f"k{k}"
    sync.mkdir(parents=True)
    threads = str(torch_threads(cpus, k))  # what a launch packing k runs gives each
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # Each worker in a session of its own; on a CPU forked as the sweep's runs are (deconcnn.backends.preloaded).
    procs = [preloaded.start_process(_worker(spec, settings, sync, i), env, sync / f"worker.{i}.log") for i in range(k)]
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
    except BaseException:  # the probe is stopped (main's signal handler): its workers go first
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        raise
    finally:
        flag("stop")
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0 if timed_out else 120)
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
    culprit = next((w for w in workers if w.get("status") not in ("ok", "aborted")), None) or next(
        (w for w in workers if w.get("status") != "ok"), None
    )
    row: dict[str, Any] = {
        "k": k,
        "status": status,
        "error": culprit.get("error") if culprit else None,
        "log_tail": culprit.get("log_tail") if culprit else None,
    }
    device = next((w["device"] for w in workers if w.get("device")), None)
    if status == "ok":
        per_run = [w["samples_per_s"] for w in ok]
        rss = [w["peak_rss_mb"] for w in ok]
        row.update(
            aggregate_samples_per_s=sum(per_run),
            per_run_samples_per_s=per_run,
            mean_per_run_samples_per_s=sum(per_run) / len(per_run),
            cpu_util=[w["cpu_util"] for w in ok],
            threads_per_run=ok[0].get("threads"),
            wall_s=max(w["wall_s"] for w in ok),
            peak_rss_mb=max(rss),
            host_memory_mb=sum(rss),
            host_memory_limit_mb=host_limit_mb,
        )
        if device and device.get("kind") == "cuda":
            reserved = [w["max_reserved_mb"] for w in ok]
            device_used = max(w["device_used_mb"] for w in ok)
            smi = [w.get("process_used_mb") for w in ok]
            # nvidia-smi's per-process figure is the whole footprint; without it, a CUDA context is
            # what the device holds beyond the k caching allocators, split evenly.
            context = max(0.0, (device_used - sum(reserved)) / k)
            per_process = [s if s is not None else r + context for s, r in zip(smi, reserved)]
            row.update(
                memory_per_process_mb=max(per_process),
                max_reserved_mb=max(reserved),
                context_mb=None if None in smi else max(s - r for s, r in zip(smi, reserved)),
                memory_total_mb=device_used,
                memory_limit_mb=device["memory_total_mb"],
                memory_source="nvidia-smi per process"
                if None not in smi
                else "reserved + (device used - reserved) / k",
            )
        else:
            row.update(
                memory_per_process_mb=max(rss),
                memory_total_mb=sum(rss),
                memory_limit_mb=host_limit_mb,
                memory_source="peak RSS",
            )
    return row


# ---------------------------------------------------------------- the probe


def gpu_for_probe() -> str | None:
    from deconcnn.backends.local import visible_gpus

    gpus = visible_gpus()
    return gpus[0] if gpus else None


def measure(
    specs: Sequence[VariantSpec], settings: ProbeSettings, report: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Probe every variant on this machine (one GPU, or the CPUs); the measurements and choices."""
    report = report or (lambda line: print(line, flush=True))
    gpu, cpus, host_limit = gpu_for_probe(), cpu_budget(), host_memory_limit_mb()
    device: dict[str, Any] | None = None
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="deconcnn-probe-") as tmp:
        for spec in specs:
            rows: list[dict[str, Any]] = []
            stopped = None
            samples = None
            for k in range(1, settings.max_workers + 1):
                report(f"{spec.variant}: k={k} ({spec.run_id}) ...")
                workers = run_trial(spec, k, settings, Path(tmp), gpu, cpus)
                device = device or next((w["device"] for w in workers if w.get("device")), None)
                samples = samples or next((w["samples_per_run"] for w in workers if w.get("samples_per_run")), None)
                rows.append(summarize_trial(k, workers, host_limit))
                report(f"{spec.variant}: {format_row(rows[-1])}")
                stopped = stop_reason(
                    rows,
                    max_workers=settings.max_workers,
                    memory_fraction=settings.memory_fraction,
                    min_gain=settings.min_gain,
                )
                if stopped:
                    break
            choice = choose_k(rows, target_fraction=settings.target_fraction, memory_fraction=settings.memory_fraction)
            report(f"{spec.variant}: stopped ({stopped}); choice {choice['reason']}")
            variants[spec.variant] = {
                "run_id": spec.run_id,
                "overrides": list(spec.overrides),
                "measurements": rows,
                "stopped": stopped,
                "choice": choice,
                "samples_per_run": samples,
            }
    return {
        "device": {
            **(device or {"kind": "unknown", "name": None, "memory_total_mb": None}),
            "host": socket.gethostname(),
            "cpus": cpus,
            "host_memory_limit_mb": host_limit,
            "gpu_index": gpu,
        },
        "settings": asdict(settings),
        "variants": variants,
    }


def format_row(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"k={row['k']} {row['status'].upper()}: {(row.get('error') or '').splitlines()[0][:160]}"
    cpu = sum(row["cpu_util"]) / len(row["cpu_util"])
    return (
        f"k={row['k']} {row['aggregate_samples_per_s']:8.1f} samples/s aggregate, "
        f"{row['mean_per_run_samples_per_s']:7.1f} per run, "
        f"{row['memory_per_process_mb']:6.0f} MB per process ({row['memory_source']}), "
        f"CPU {cpu:.0%} per process"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deconcnn.sweep.probe.measure")
    parser.add_argument("--request", type=Path, required=True, help="specs and settings (written by probe-resources)")
    parser.add_argument("--out", type=Path, required=True, help="the result JSON")
    args = parser.parse_args(argv)

    def stopped(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through run_trial, which kills the workers

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopped)
    request = json.loads(args.request.read_text())
    specs = [VariantSpec(s["variant"], s["run_id"], tuple(s["overrides"])) for s in request["specs"]]
    result = measure(specs, ProbeSettings(**request["settings"]))
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
