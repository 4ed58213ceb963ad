"""Planted loss curves shaped like the sweep's: its schedule, its length, SGD-like noise.

Used by the known-answer tests (tests/analysis/test_slopes.py) and the full Monte Carlo
(benchmarks/analysis_known_answer.py). A scenario is a schedule (the per-step ``lr``), a curve in
the effective time ``tau`` (``curves.time_axis``) or in steps, and the truth: the planted
``alpha_early`` / ``alpha_full`` (NaN where no power law was planted) and the knee (epoch; 0 = no
burn-in). Noise is multiplicative and mean-preserving per batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal

from deconcnn.analysis.per_run import analyze_run
from deconcnn.training.module import warmup_cosine

SPE = 352  # 45k images / batch 128
EPOCHS = 50
N_STEPS = EPOCHS * SPE
WARMUP_EPOCHS = 5
ALPHA, C, A = 0.6, 0.02, 2.0


@functools.cache
def schedule(kind: str, n_steps: int = N_STEPS, spe: int = SPE) -> np.ndarray:
    """Per-step LR multiplier: the sweep's warm-up + cosine (its own code), a step schedule
    (x0.1 at epochs 25 and 40), or constant."""
    if kind == "warmup_cosine":
        warm = WARMUP_EPOCHS * spe
        return np.array([warmup_cosine(s, warm, n_steps) for s in range(n_steps)])
    if kind == "step":
        e = np.arange(n_steps) / spe
        return np.where(e < 25, 1.0, np.where(e < 40, 0.1, 0.01))
    if kind == "constant":
        return np.ones(n_steps)
    raise ValueError(kind)


def tau_of(lr: np.ndarray) -> np.ndarray:
    return np.cumsum(lr) / lr.max()


@dataclass(frozen=True)
class Scenario:
    name: str
    sched: str
    curve: str  # power_law | power_law_steps | exponential | broken | offset
    alpha_early: float  # planted local exponent on epochs 5-15 (NaN: no power law planted)
    alpha_full: float  # planted exponent from the knee to the end (NaN: none)
    knee_epoch: float  # planted burn-in end (0: none)
    break_epoch: float = math.nan


def clean_curve(sc: Scenario, lr: np.ndarray) -> np.ndarray:
    tau = tau_of(lr)
    t = np.arange(1, lr.size + 1, dtype=np.float64)
    if sc.curve == "power_law":
        return C + A * tau**-ALPHA
    if sc.curve == "power_law_steps":
        return C + A * t**-ALPHA
    if sc.curve == "exponential":
        return 0.1 + 2.0 * np.exp(-tau / 2500.0)
    if sc.curve == "offset":  # one epoch of effective time before the first logged step
        return C + 0.8 * (1 + tau / SPE) ** -ALPHA
    if sc.curve == "broken":
        t_b = tau[int(sc.break_epoch * SPE)]
        u = np.log(tau / t_b)
        return C + 0.5 * np.exp(-0.25 * np.minimum(u, 0) - 0.9 * np.maximum(u, 0))
    raise ValueError(sc.curve)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("power_law_steps", "constant", "power_law_steps", ALPHA, ALPHA, 0.0),
        Scenario("power_law_tau", "warmup_cosine", "power_law", ALPHA, ALPHA, 0.0),
        Scenario("step_schedule", "step", "power_law", ALPHA, ALPHA, 0.0),
        Scenario("exponential", "warmup_cosine", "exponential", math.nan, math.nan, 0.0),
        *(
            Scenario(f"broken_e{b}", "warmup_cosine", "broken", 0.9 if b < 5 else math.nan, 0.9, b, b)
            for b in (3, 8, 12)
        ),
        # a power law in tau + 1 epoch: locally bent early, alpha only asymptotically
        Scenario("offset", "warmup_cosine", "offset", math.nan, math.nan, math.nan),
    )
}
NOISES = ("iid", "ar1", "hetero", "spikes")
LEVELS = (0.01, 0.1, 0.3)


def noise(kind: str, level: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mean-one multiplicative noise per batch: ``exp(level * z - level^2 / 2)`` with ``z``
    iid N(0,1), AR(1) with phi 0.98 (unit variance), heteroscedastic (sd rising from 0.5x to 2x
    the level over the run), or iid plus spikes (0.5% of batches x3)."""
    z = rng.standard_normal(n)
    if kind == "ar1":
        phi = 0.98  # started from its stationary law
        z[1:] = signal.lfilter([math.sqrt(1 - phi**2)], [1, -phi], z[1:], zi=[phi * z[0]])[0]
    sd = level * (np.linspace(0.5, 2.0, n) if kind == "hetero" else np.ones(n))
    out = np.exp(sd * z - sd**2 / 2)
    if kind == "spikes":
        spike = rng.random(n) < 0.005
        out = out * np.where(spike, 3.0, 1.0) / (1 + 0.005 * 2.0)
    return out


def draw(sc: Scenario, kind: str, level: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, lr, loss)`` of one noisy run (lr in absolute units: peak 0.1)."""
    lr = schedule(sc.sched).copy()
    rng = np.random.default_rng(seed)
    loss = clean_curve(sc, lr) * noise(kind, level, lr.size, rng)
    return np.arange(lr.size), 0.1 * lr, loss


# ------------------------------------------------------------------------------ Monte Carlo
def analyse_draw(sc: Scenario, kind: str, level: float, seed: int) -> dict[str, Any]:
    """One draw through ``analyze_run`` (defaults of the ``analyze`` command, no bootstrap)."""
    steps, lr, loss = draw(sc, kind, level, seed)
    run = analyze_run(steps, loss, SPE, lr=lr)["run"]
    return {k: run[k] for k in _KEEP}


_KEEP = (
    "alpha_early",
    "alpha_early_lo",
    "alpha_early_hi",
    "alpha_early_flag",
    "alpha_full",
    "alpha_full_lo",
    "alpha_full_hi",
    "alpha_full_flag",
    "knee_epoch",
    "knee_epoch_lo",
    "knee_epoch_hi",
    "knee_detected",
    "selected_model",
)


def summarise(sc: Scenario, rows: list[dict[str, Any]], ref_knee: float = math.nan) -> dict[str, Any]:
    """Per scenario: for alpha_early and alpha_full, bias (% of the planted alpha, mean over the
    unflagged finite values) and its Monte Carlo standard error, 95% coverage and median width
    (same values), the fraction left unflagged; knee: median error (epochs; against the planted
    break, or 'found at the first candidate' when none was planted), the share detected, and the
    share of draws whose knee interval holds ``ref_knee`` (the same curve's median knee at 1% noise: the knee moves by
    less than its own interval as the noise grows); the modal model from the knee."""
    out: dict[str, Any] = {"n": len(rows)}
    for key, truth in (("alpha_early", sc.alpha_early), ("alpha_full", sc.alpha_full)):
        ok = [r for r in rows if not r[f"{key}_flag"] and math.isfinite(r[key])]
        out[f"{key}_unflagged"] = len(ok) / len(rows)
        if math.isfinite(truth) and ok:
            v = np.array([r[key] for r in ok])
            lo = np.array([r[f"{key}_lo"] for r in ok])
            hi = np.array([r[f"{key}_hi"] for r in ok])
            out[f"{key}_bias_pct"] = 100 * (float(np.mean(v)) - truth) / truth
            # the Monte Carlo's own standard error of that mean (large where alpha is noisy)
            sd = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
            out[f"{key}_bias_se_pct"] = 100 * sd / math.sqrt(v.size) / truth
            out[f"{key}_coverage"] = float(np.mean((lo <= truth) & (truth <= hi)))
            out[f"{key}_width"] = float(np.median(hi - lo))
        else:
            out |= {f"{key}_{s}": math.nan for s in ("bias_pct", "bias_se_pct", "coverage", "width")}
    knee = np.array([r["knee_epoch"] for r in rows])
    det = np.array([r["knee_detected"] for r in rows])
    out["knee_detected"] = float(np.mean(det))
    out["knee_median"] = float(np.nanmedian(knee))
    lo = np.array([r["knee_epoch_lo"] for r in rows])
    hi = np.array([r["knee_epoch_hi"] for r in rows])
    out["knee_stable"] = float(np.mean((lo <= ref_knee) & (ref_knee <= hi))) if math.isfinite(ref_knee) else math.nan
    if math.isfinite(sc.break_epoch):
        out["knee_err"] = float(np.nanmedian(np.abs(knee - sc.break_epoch)))
        out["knee_within_1"] = float(np.mean(np.abs(knee - sc.break_epoch) <= 1.0))
    else:
        out["knee_err"] = float(np.nanmedian(knee - 0.5))  # the first candidate is epoch 0.5
        out["knee_within_1"] = float(np.mean(~det))
    models = [r["selected_model"] for r in rows]
    top = max(set(models), key=models.count, default=None)
    out["model"] = f"{top} {models.count(top) / len(rows):.0%}" if top else "none"
    return out


def grid() -> list[tuple[str, str, float]]:
    """``(scenario, noise, level)`` of the Monte Carlo: every noise and level on the power law
    under the sweep's schedule; 10% of each noise kind on the others; 1-30% iid on the offset
    curve (the knee's stability as the noise grows)."""
    out = [("power_law_tau", k, lv) for k in NOISES for lv in LEVELS]
    others = [n for n in SCENARIOS if n not in ("power_law_tau", "offset")]
    out += [(n, k, 0.1) for n in others for k in NOISES]
    out += [("offset", "iid", lv) for lv in LEVELS]
    return out
