"""One run's loss-curve analysis as flat rows, and summaries over runs (cells, variants).

Time axis: the per-batch records carry ``step`` = optimizer steps completed before the batch,
starting at 0; the fits run on ``x > 0``: the effective time ``tau`` from the logged ``lr`` by
default, or ``step + 1`` (:func:`curves.time_axis`). Run-table columns that say ``step`` are the
step at which ``x`` reaches the value; ``epoch`` columns are ``step / steps_per_epoch``; the fits
table's positions stay on the time axis (``x - 1``). Column meanings: ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from deconcnn.analysis import curves as C
from deconcnn.analysis import fits as F
from deconcnn.analysis import slopes as S
from deconcnn.analysis.columns import (
    ALPHA_EARLY_FLAG,
    ALPHA_FULL_FLAG,
    CURVE_FLAG,
    FLAG_COLUMNS,
    FLAG_SEP,
    KNEE_FLAG,
    value_flags,
)
from deconcnn.analysis.curves import DEFAULT_BINS_PER_DECADE, TAU, log_bins
from deconcnn.analysis.plateau import PLATEAU_COLUMNS, plateau_row
from deconcnn.analysis.stats import effect_size, median_spread
from deconcnn.analysis.units import UNITS_COLUMNS, UNITS_RTOL, units_check
from deconcnn.runlog.states import STATES

KNEE_EPOCHS = (0.5, 20.0)
EARLY_EPOCHS = (5.0, 15.0)
# AICc by which the exponential must beat the power law on the floor's range (knee to epoch 15)
# to flag alpha_early "not a power law" (Burnham & Anderson's "essentially no support" for the
# loser). Without it, AR(1) noise made power laws lose by 0-12 in 5% of draws, the low slopes:
# leaving those out biased alpha_early by +4.5%. Exponentials win there by >= 100; on alpha_full's
# shorter range after a late knee by only 3-22, so that flag keeps no margin (docs/analysis.md 7).
EARLY_EXPONENTIAL_MARGIN = 10.0
_STEP_PARAMS = {"t_b": "break_step"}  # parameters that are positions on the t axis
_PARAM_SUFFIXES = ("", "_se", "_lo", "_hi", "_boot_lo", "_boot_hi")

FIT_COLUMNS: tuple[str, ...] = (
    "model",
    "ok",
    "reason",
    "n_bins",
    "k",
    "step_start",
    "step_end",
    "epoch_start",
    "epoch_end",
    "ref_step",
    "rss",
    "r2",
    "resid_scale",
    "aic",
    "aicc",
    "bic",
    "delta_aicc",
    "weight",
    "selected",
    "start_rule",
    *tuple(
        f"{_STEP_PARAMS.get(p, p)}{sfx}"
        for p in dict.fromkeys(p for m in F.MODELS for p in F.PARAMS[m])
        for sfx in _PARAM_SUFFIXES
    ),
)
RUN_COLUMNS: tuple[str, ...] = (
    "reason",
    "n_steps",
    "steps_per_epoch",
    "time_axis",
    CURVE_FLAG,
    "final_loss_nats",
    "final_loss_n",
    "knee_step",
    "knee_epoch",
    "knee_step_lo",
    "knee_step_hi",
    "knee_epoch_lo",
    "knee_epoch_hi",
    "knee_detected",
    "knee_stat",
    KNEE_FLAG,
    "knee_reason",
    "fit_start_step",
    "start_rule",
    "selected_model",
    "best_aicc_model",
    "weight_power_law",
    "weight_exponential",
    "weight_broken_power_law",
    "alpha_full",
    "alpha_full_se",
    "alpha_full_lo",
    "alpha_full_hi",
    "alpha_full_dof",
    "c_full",
    "c_full_se",
    "r2_full",
    ALPHA_FULL_FLAG,
    "alpha_full_reason",
    "alpha_early",
    "alpha_early_se",
    "alpha_early_lo",
    "alpha_early_hi",
    "alpha_early_dof",
    "alpha_early_c",
    "alpha_early_c_se",
    "alpha_early_n_bins",
    ALPHA_EARLY_FLAG,
    "alpha_early_reason",
    *UNITS_COLUMNS,
    *PLATEAU_COLUMNS,
)
KNEE_TABLE_COLUMNS: tuple[str, ...] = (
    "break_step",
    "break_epoch",
    "break_epoch_lo",
    "break_epoch_hi",
    "alpha1",
    "alpha2",
    "stat",
    "stat_crit",
    "detected",
    "aicc_power_law",
    "aicc_broken_power_law",
    "reason",
)
SHORT_RUN_EPOCHS = 3.0  # shorter runs get the curve flag's reason and no numbers


def _nan_if_none(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _fit_row(fit: F.Fit, steps_per_epoch: float, sel: Mapping[str, Any], start_rule: str) -> dict[str, Any]:
    """A :class:`Fit` as a ``FIT_COLUMNS`` row: t -> step, absent parameters NaN."""
    raw = fit.as_row()
    row: dict[str, Any] = dict.fromkeys(FIT_COLUMNS, math.nan)
    for key in ("model", "ok", "reason", "n_bins", "k", "rss", "r2", "resid_scale", "aic", "aicc", "bic"):
        row[key] = raw[key]
    row["step_start"], row["step_end"] = fit.t_start - 1, fit.t_end - 1
    row["epoch_start"] = row["step_start"] / steps_per_epoch
    row["epoch_end"] = row["step_end"] / steps_per_epoch
    row["ref_step"] = fit.t_ref - 1
    for p in F.PARAMS[fit.model]:
        shift = 1.0 if p in _STEP_PARAMS else 0.0
        for sfx in _PARAM_SUFFIXES:
            # a standard error is a width, not a position: no shift
            off = shift if sfx != "_se" else 0.0
            row[f"{_STEP_PARAMS.get(p, p)}{sfx}"] = raw[f"{p}{sfx}"] - off
    row["delta_aicc"] = sel["delta"].get(fit.model, math.nan)
    row["weight"] = sel["weight"].get(fit.model, math.nan)
    row["selected"] = sel["chosen"] == fit.model
    row["start_rule"] = start_rule
    return row


def truncation(y: np.ndarray, lr: np.ndarray | None) -> tuple[int, str]:
    """Index of the first unusable step (non-finite or non-positive loss, non-finite lr), why."""
    bad_loss = ~np.isfinite(y) | (y <= 0)
    bad_lr = ~np.isfinite(lr) if lr is not None else np.zeros(y.size, bool)
    bad = bad_loss | bad_lr
    if not bad.any():
        return y.size, ""
    i = int(np.argmax(bad))
    what = "non-finite loss" if not np.isfinite(y[i]) else "non-positive loss" if y[i] <= 0 else "non-finite lr"
    return i, what


def _join(*reasons: str) -> str:
    return FLAG_SEP.join(dict.fromkeys(r for r in reasons if r))


def analyze_run(
    steps: ArrayLike,
    loss_nats: ArrayLike,
    steps_per_epoch: float,
    *,
    loss_bits: ArrayLike | None = None,
    lr: ArrayLike | None = None,
    time_axis: str = TAU,
    curvature_steps: ArrayLike | None = None,
    lambda_max: ArrayLike | None = None,
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    knee_epochs: tuple[float, float] = KNEE_EPOCHS,
    early_epochs: tuple[float, float] = EARLY_EPOCHS,
    final_n: int | None = None,
    threshold: float = F.AIC_THRESHOLD,
    n_boot: int = 0,
    knee_stat: float = S.KNEE_STAT,
    block_steps: int | None = None,
    units_rtol: float = UNITS_RTOL,
    seed: int = 0,
) -> dict[str, Any]:
    """Analyse one run's per-batch training loss (nats); never raises.

    Returns ``{"run": dict, "fits": [dict, dict, dict], "knee_table": [dict]}`` with keys
    ``RUN_COLUMNS``, ``FIT_COLUMNS`` and ``KNEE_TABLE_COLUMNS`` (``docs/analysis.md``):

    1. Time axis ``x`` (:func:`curves.time_axis`: effective time ``tau`` from ``lr`` by default,
       ``steps`` on request or without a usable ``lr``), binned (``bins_per_decade``). The curve
       is cut before its first non-finite or non-positive value (``curve_flag`` says where).
    2. Knee: :func:`slopes.knee_test` from the first candidate (``knee_epochs[0]``), breakpoint
       within ``knee_epochs``, critical ``F`` ``knee_stat``; HAC intervals (:func:`slopes.hac_se`)
       with ``block_steps`` (default one epoch) as the bandwidth's floor and the scale's unit.
    3. The three models on the bins from the knee to the end (``n_boot`` wild-bootstrap
       intervals in the fits table); ``alpha_full`` = the power law's alpha there, HAC interval.
    4. ``alpha_early``: :func:`slopes.early_slope` on ``early_epochs`` (default 5-15), floor from
       the knee (or the first candidate when the knee is past the window's start) to its end.
    5. Flags (``FLAG_COLUMNS``, :mod:`columns`).
    6. Units check (:func:`units.units_check`): the logged ``loss_bits`` against the nats, record
       by record and through the power-law fit, tolerance ``units_rtol``.
    7. ``lambda_max`` shape and plateau (:func:`plateau.plateau_row`, with ``lr`` when given).
    8. ``final_loss_nats``: mean of the last ``final_n`` losses (default one epoch).
    """
    run: dict[str, Any] = dict.fromkeys(RUN_COLUMNS, math.nan)
    run |= {
        "reason": "",
        "steps_per_epoch": float(steps_per_epoch),
        "time_axis": "",
        "knee_reason": "",
        "alpha_full_reason": "",
        "alpha_early_reason": "",
        "start_rule": "",
        "selected_model": None,
        "best_aicc_model": None,
        "knee_detected": False,
        "units_agree": False,
        **dict.fromkeys(FLAG_COLUMNS, ""),
    }
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(loss_nats, dtype=np.float64).reshape(-1)
    r = None if lr is None else np.asarray(lr, dtype=np.float64).reshape(-1)
    run["n_steps"] = int(y.size)
    spe = float(steps_per_epoch)
    spe_ok = spe > 0
    run |= plateau_row(curvature_steps, lambda_max, spe, lr_steps=steps if lr is not None else None, lr=lr)
    bits_raw = None if loss_bits is None else np.asarray(loss_bits, dtype=np.float64).reshape(-1)
    # cut and moved with the loss; one of another length goes to units_check as it is (it says so)
    bits = bits_raw if bits_raw is not None and bits_raw.shape == s.shape else None

    problem, flag = "", ""
    if not spe_ok:
        problem = "steps_per_epoch must be > 0"
    elif s.size != y.size or (r is not None and r.size != y.size):
        problem = flag = f"different lengths: steps {s.size}, loss {y.size}" + ("" if r is None else f", lr {r.size}")
    else:
        order = np.argsort(s, kind="stable")
        s, y = s[order], y[order]
        r = None if r is None else r[order]
        bits = None if bits is None else bits[order]
        cut, why = truncation(y, r)
        if cut < y.size:
            flag = f"truncated at epoch {s[cut] / spe:.2f} ({why})" if cut else f"no usable values ({why})"
            s, y, r = s[:cut], y[:cut], None if r is None else r[:cut]
            bits = None if bits is None else bits[:cut]
        epochs = s.size / spe
        if not s.size:
            problem = flag
        elif epochs < SHORT_RUN_EPOCHS:
            flag = _join(flag, f"short run: {epochs:.2f} epochs")
            problem = f"short run: {epochs:.2f} < {SHORT_RUN_EPOCHS:g} epochs"
        elif epochs < early_epochs[1]:
            flag = _join(flag, f"short run: {epochs:.2f} epochs")
    run[CURVE_FLAG] = flag
    if problem:
        run |= {
            k: problem for k in ("reason", "knee_reason", "alpha_full_reason", "alpha_early_reason", "units_reason")
        }
        no_sel: dict[str, Any] = {"delta": {}, "weight": {}, "chosen": None}
        failed = [_fit_row(F.failed_fit(m, problem), spe if spe_ok else math.nan, no_sel, "") for m in F.MODELS]
        return {"run": run, "fits": failed, "knee_table": []}

    x, axis, axis_why = C.time_axis(s, r, time_axis)
    moved = x > 0  # steps before the first nonzero lr have no place on a log axis
    s, x, y = s[moved], x[moved], y[moved]
    bits = None if bits is None else bits[moved]
    run["time_axis"] = axis
    run[CURVE_FLAG] = _join(flag, axis_why if lr is not None else "")
    n_final = int(final_n or round(spe))
    run["final_loss_nats"] = float(np.mean(y[-n_final:]))
    run["final_loss_n"] = min(n_final, int(y.size))
    block = int(block_steps or round(spe))

    def x_at(epoch: float) -> float:
        return float(x[min(round(epoch * spe), x.size - 1)])

    def step_of(xv: float) -> float:
        if not math.isfinite(xv):
            return math.nan
        return float(s[min(int(np.searchsorted(x, xv - 1e-9)), s.size - 1)])

    curve = log_bins(x, y, bins_per_decade)
    kt = S.knee_test(x, y, curve, x_at(knee_epochs[0]), (x_at(knee_epochs[0]), x_at(knee_epochs[1])), block, knee_stat)
    knee_flag = run[CURVE_FLAG]
    if math.isfinite(kt.knee_x):
        k_step = step_of(kt.knee_x)
        lo, hi = step_of(kt.lo), step_of(kt.hi)
        run |= {
            "knee_step": k_step,
            "knee_epoch": k_step / spe,
            "knee_step_lo": lo,
            "knee_step_hi": hi,
            "knee_epoch_lo": lo / spe,
            "knee_epoch_hi": hi / spe,
        }
        if kt.detected and not (x_at(knee_epochs[0]) < kt.knee_x < x_at(knee_epochs[1]) * 0.999):
            knee_flag = _join(knee_flag, "break at the end of the candidate range")
    else:
        knee_flag = _join(knee_flag, kt.reason)
    run |= {"knee_detected": kt.detected, "knee_stat": kt.stat, "knee_reason": kt.reason, KNEE_FLAG: knee_flag}

    first = x_at(knee_epochs[0])
    start = kt.knee_x if math.isfinite(kt.knee_x) else first
    start_rule = "knee" if kt.detected else "first_candidate"
    run |= {"fit_start_step": step_of(start), "start_rule": start_rule}
    alpha, c_est, window = S.full_slope(x, y, start, bins_per_decade, block)
    fits = F.fit_models(window, n_boot=n_boot, seed=seed)
    sel = F.select_model(fits, threshold)
    run |= {"selected_model": sel["chosen"], "best_aicc_model": sel["best"]}
    for m in F.MODELS:
        run[f"weight_{m}"] = sel["weight"].get(m, math.nan)
    pl, ex = fits[F.POWER_LAW], fits[F.EXPONENTIAL]
    full_flag = run[CURVE_FLAG]
    run["alpha_full_reason"] = alpha.reason
    if pl.ok:
        run |= {
            "alpha_full": alpha.value,
            "alpha_full_se": alpha.se,
            "alpha_full_lo": alpha.lo,
            "alpha_full_hi": alpha.hi,
            "alpha_full_dof": alpha.dof,
            "c_full": c_est.value,
            "c_full_se": c_est.se,
            "r2_full": pl.r2,
        }
        # like for like: the exponential's floor is >= 0, so is the power law's it is checked against
        # (free below 0, the power law tied exponentials under AR(1) noise in 15% of draws)
        if ex.ok and ex.aicc < F.fit_power_law(window, c_min=0.0).aicc:
            full_flag = _join(full_flag, "exponential fits better")
        if len(window) < F.KNEE_MIN_BINS:
            full_flag = _join(full_flag, f"{len(window)} < {F.KNEE_MIN_BINS} bins")
    run[ALPHA_FULL_FLAG] = full_flag

    e0, e1 = early_epochs
    x0, x1 = x_at(e0), float(x[round(e1 * spe) - 1]) if e1 * spe <= x.size else math.inf
    early_flag = run[CURVE_FLAG]
    if kt.detected and x0 < kt.knee_x <= x1:
        early_flag = _join(early_flag, f"break at epoch {run['knee_epoch']:.2f}, inside the window")
    if math.isfinite(x1):
        es = S.early_slope(x, y, start if start <= x0 else first, x0, x1, bins_per_decade, block)
        run |= {
            "alpha_early": es.alpha.value,
            "alpha_early_se": es.alpha.se,
            "alpha_early_lo": es.alpha.lo,
            "alpha_early_hi": es.alpha.hi,
            "alpha_early_dof": es.alpha.dof,
            "alpha_early_c": es.c.value,
            "alpha_early_c_se": es.c.se,
            "alpha_early_n_bins": es.n_bins,
            "alpha_early_reason": es.reason or es.alpha.reason,
        }
        if es.exponential.ok and es.floor_fit.ok and es.exponential.aicc < es.floor_fit.aicc - EARLY_EXPONENTIAL_MARGIN:
            early_flag = _join(early_flag, "exponential fits better")
    else:
        run["alpha_early_reason"] = f"the curve ends at epoch {s.size / spe:.2f}, before the window's end ({e1:g})"
    run[ALPHA_EARLY_FLAG] = early_flag

    run |= units_check(
        y,
        bits_raw if bits is None else bits,
        lambda v: F.fit_power_law(log_bins(x, v, bins_per_decade, min_t=start)).params.get("alpha", math.nan),
        rtol=units_rtol,
    )

    rows = [_fit_row(fits[m], spe, sel, start_rule) for m in F.MODELS]
    b = kt.broken
    bstep = step_of(b.params["t_b"]) if b.ok else math.nan
    table = [
        {
            "break_step": bstep,
            "break_epoch": bstep / spe,
            "break_epoch_lo": run["knee_epoch_lo"] if kt.detected else math.nan,
            "break_epoch_hi": run["knee_epoch_hi"] if kt.detected else math.nan,
            "alpha1": b.params.get("alpha1", math.nan),
            "alpha2": b.params.get("alpha2", math.nan),
            "stat": kt.stat,
            "stat_crit": knee_stat,
            "detected": kt.detected,
            "aicc_power_law": kt.power_law.aicc,
            "aicc_broken_power_law": b.aicc,
            "reason": kt.reason,
        }
    ]
    return {"run": run, "fits": rows, "knee_table": table}


def predict(fit_row: Mapping[str, Any], steps: ArrayLike) -> np.ndarray:
    """The loss a ``FIT_COLUMNS`` row's model gives at ``steps`` (the models of fits.py, in steps)."""
    t = np.asarray(steps, dtype=np.float64) + 1
    a, c = fit_row["a"], fit_row["c"]
    if fit_row["model"] == F.POWER_LAW:
        return c + a * (t / (fit_row["ref_step"] + 1)) ** -fit_row["alpha"]
    if fit_row["model"] == F.EXPONENTIAL:
        return c + a * np.exp(-(t - fit_row["ref_step"] - 1) / fit_row["tau"])
    t_b = fit_row["break_step"] + 1
    return c + a * (t / t_b) ** np.where(t < t_b, -fit_row["alpha1"], -fit_row["alpha2"])


def _groups(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    """Rows grouped by their values of ``keys`` (absent key -> None), in first-seen order."""
    out: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return out


def _values(rows: Iterable[Mapping[str, Any]], key: str, status_key: str) -> tuple[list[float], int]:
    """``key`` of the completed rows whose value no flag marks (None -> NaN, counted as missing by
    the callers), and how many completed rows were left out for a flag (columns.value_flags)."""
    done = [r for r in rows if r.get(status_key) == "completed"]
    kept = [r for r in done if not value_flags(r, key)]
    return [_nan_if_none(r.get(key)) for r in kept], len(done) - len(kept)


def summarize_cells(
    rows: Iterable[Mapping[str, Any]],
    group_keys: Sequence[str],
    value_keys: Sequence[str],
    *,
    status_key: str = "status",
) -> list[dict[str, Any]]:
    """Per group (e.g. ``("variant", "lr", "weight_decay")``): status counts and spread over seeds.

    One row per group, in first-seen order, with the group keys, ``n_runs``, ``n_<status>`` for
    each of ``STATES`` and ``n_other`` (any other status), and per value key ``v``:
    ``v_median, v_q25, v_q75, v_iqr, v_min, v_max`` over the *completed* runs with a finite
    value, ``v_n`` (how many), ``v_n_missing`` (completed runs without one: the analysis
    failed) and ``v_n_flagged`` (completed runs whose value a flag marks: left out,
    :func:`columns.value_flags`). Diverged, failed and missing runs are counted, never averaged in.
    """
    out = []
    for key, members in _groups(rows, group_keys).items():
        row: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        statuses = [m.get(status_key) for m in members]
        row["n_runs"] = len(members)
        for st in STATES:
            row[f"n_{st}"] = statuses.count(st)
        row["n_other"] = sum(st not in STATES for st in statuses)
        for v in value_keys:
            values, flagged = _values(members, v, status_key)
            spread = median_spread(values)
            for stat in ("median", "q25", "q75", "iqr", "min", "max"):
                row[f"{v}_{stat}"] = spread[stat]
            row[f"{v}_n"], row[f"{v}_n_missing"], row[f"{v}_n_flagged"] = spread["n"], spread["n_nan"], flagged
        out.append(row)
    return out


def compare_variants(
    rows: Iterable[Mapping[str, Any]],
    key: str,
    baseline_variant: str,
    *,
    variant_key: str = "variant",
    by: Sequence[str] = ("lr", "weight_decay"),
    status_key: str = "status",
) -> list[dict[str, Any]]:
    """Each variant against ``baseline_variant`` on ``key``, over seeds, within each ``by`` cell.

    One row per (variant, cell) with ``variant``, ``baseline``, the ``by`` keys, ``key`` (the
    value compared) and :func:`stats.effect_size` of the variant's completed runs (group a)
    against the baseline's in the same cell (group b), flagged values left out and counted
    (``n_flagged_a``, ``n_flagged_b``). ``by=()`` pools all cells (then cell
    effects add to the spread). p-values are per comparison, not adjusted for multiplicity.
    """
    rows = list(rows)
    base = _groups((r for r in rows if r.get(variant_key) == baseline_variant), by)
    out = []
    for (variant, *cell), members in _groups(rows, (variant_key, *by)).items():
        if variant == baseline_variant:
            continue
        ref = base.get(tuple(cell), [])
        (a, flagged_a), (b, flagged_b) = _values(members, key, status_key), _values(ref, key, status_key)
        out.append(
            {
                "variant": variant,
                "baseline": baseline_variant,
                **dict(zip(by, cell, strict=True)),
                "key": key,
                **effect_size(a, b),
                "n_flagged_a": flagged_a,
                "n_flagged_b": flagged_b,
            }
        )
    return out
