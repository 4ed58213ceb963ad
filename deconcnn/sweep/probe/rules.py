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

No torch here: the measuring is done by worker processes. This module holds the rules and the
file's reader; measure.py the measuring (run as one job through the sweep's executor, a GPU of
the cluster or this machine), runner.py the command, render.py the table and the plot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconcnn.runlog.errors import SweepError

PROBE_VERSION = 1
MEMORY_FRACTION = 0.85  # never choose a k whose memory exceeds this share of the device (or RAM)
TARGET_FRACTION = 0.90  # the smallest k reaching this share of the best aggregate throughput
MIN_GAIN = 0.05  # stop when k adds less than this to the best aggregate throughput so far
MB = 2**20


class ProbeFileError(SweepError):
    """probe.json is unreadable, corrupt, or measured for other variants."""


class ProbeFailed(SweepError):
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
    for used, limit in (
        (m.get("memory_total_mb"), m.get("memory_limit_mb")),
        (m.get("host_memory_mb"), m.get("host_memory_limit_mb")),
    ):
        if used is not None and limit and used > fraction * limit:
            return False
    return True


def choose_k(
    measurements: Sequence[dict[str, Any]],
    *,
    target_fraction: float = TARGET_FRACTION,
    memory_fraction: float = MEMORY_FRACTION,
) -> dict[str, Any]:
    """The smallest k whose aggregate samples/s reaches `target_fraction` of the best k's, among the
    k that ran without OOM or failure and within `memory_fraction` of the memory limit.

    Returns {"k", "ok", "reason"}; ok is False (and k 1, the unpacked default) when no k qualifies.
    """
    usable = [m for m in measurements if m.get("status") == "ok" and m.get("aggregate_samples_per_s")]
    eligible = [m for m in usable if within_memory(m, memory_fraction)]
    if not eligible:
        first = min(measurements, key=lambda m: m["k"], default=None)
        why = (
            "nothing was measured"
            if first is None
            else (
                f"k={first['k']} {first.get('status')}: {first.get('error') or 'over the memory limit'}"
                if first.get("status") != "ok"
                else f"k={first['k']} is over the memory limit"
            )
        )
        return {"k": 1, "ok": False, "reason": f"no k ran within the limits ({why}); defaulting to 1"}
    best = max(eligible, key=lambda m: m["aggregate_samples_per_s"])
    threshold = target_fraction * best["aggregate_samples_per_s"]
    chosen = min((m for m in eligible if m["aggregate_samples_per_s"] >= threshold), key=lambda m: m["k"])
    reason = (
        f"k={chosen['k']}: {chosen['aggregate_samples_per_s']:.1f} samples/s, "
        f"{chosen['aggregate_samples_per_s'] / best['aggregate_samples_per_s']:.0%} of the best "
        f"(k={best['k']}, {best['aggregate_samples_per_s']:.1f})"
    )
    skipped = sorted(m["k"] for m in usable if m not in eligible)
    if skipped:
        reason += f"; over {memory_fraction:.0%} of memory: k={','.join(map(str, skipped))}"
    return {"k": chosen["k"], "ok": True, "reason": reason}


def stop_reason(
    measurements: Sequence[dict[str, Any]],
    *,
    max_workers: int,
    memory_fraction: float = MEMORY_FRACTION,
    min_gain: float = MIN_GAIN,
) -> str | None:
    """Why not to measure k+1 after the last measurement, or None to go on."""
    last = measurements[-1]
    k = last["k"]
    if last["status"] == "oom":
        return f"out of memory at k={k}"
    if last["status"] != "ok":
        return f"k={k} {last['status']}"
    if not within_memory(last, memory_fraction):
        return f"memory limit: k={k} is over {memory_fraction:.0%} ({_memory_text(last)})"
    earlier = [
        m["aggregate_samples_per_s"]
        for m in measurements[:-1]
        if m["status"] == "ok" and m.get("aggregate_samples_per_s")
    ]
    if earlier and last["aggregate_samples_per_s"] < (1 + min_gain) * max(earlier):
        gain = last["aggregate_samples_per_s"] / max(earlier) - 1
        return f"throughput stopped rising: {gain:+.0%} at k={k} (< +{min_gain:.0%})"
    if k >= max_workers:
        return f"--max-workers {max_workers} reached"
    grown = {
        **last,
        **{key: last[key] * (k + 1) / k for key in ("memory_total_mb", "host_memory_mb") if last.get(key) is not None},
    }
    if not within_memory(grown, memory_fraction):
        return f"memory limit: k={k + 1} would be over {memory_fraction:.0%} ({_memory_text(grown)})"
    return None


def _memory_text(m: dict[str, Any]) -> str:
    parts = []
    for used, limit, label in (
        ("memory_total_mb", "memory_limit_mb", "device"),
        ("host_memory_mb", "host_memory_limit_mb", "host"),
    ):
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
        raise ProbeFileError(
            f"probe file {path} was measured for variants {sorted(measured)}, not for {missing} of this sweep; {rerun}"
        )
    choice = {}
    for variant in variants:
        k = (measured[variant].get("choice") or {}).get("k") if isinstance(measured[variant], dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ProbeFileError(f"probe file {path} is corrupt (variant {variant}: no choice k >= 1); {rerun}")
        choice[variant] = k
    return choice


def probe_hours_per_run(probe_path: str | Path) -> dict[str, float]:
    """Hours one run of each variant takes at the chosen packing, from the probe's per-run
    throughput and the run's samples (steps x batch); variants the probe could not time are absent."""
    try:
        data = json.loads(Path(probe_path).read_text())
        measured = data["variants"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    hours = {}
    for variant, entry in measured.items():
        k, samples = (entry.get("choice") or {}).get("k"), entry.get("samples_per_run")
        rows = [m for m in entry.get("measurements", []) if m.get("k") == k and m.get("status") == "ok"]
        if samples and rows and rows[0].get("mean_per_run_samples_per_s"):
            hours[variant] = samples / rows[0]["mean_per_run_samples_per_s"] / 3600
    return hours
