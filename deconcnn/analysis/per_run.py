"""One run's loss-curve analysis as flat rows, and summaries over runs (cells, variants).

Step axis: the per-batch records carry ``step`` = optimizer steps completed before the batch,
starting at 0; the fits need ``t > 0`` on a log axis, so ``t = step + 1`` (the batch's update
number). Every column that says ``step`` is converted back (``step = t - 1``); ``epoch`` columns
are ``step / steps_per_epoch``. Column meanings: ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from deconcnn.analysis import fits as F
from deconcnn.analysis.columns import value_flags
from deconcnn.analysis.curves import DEFAULT_BINS_PER_DECADE, curve_problem, log_bins
from deconcnn.analysis.plateau import PLATEAU_COLUMNS, plateau_row
from deconcnn.analysis.stats import effect_size, median_spread
from deconcnn.analysis.units import UNITS_COLUMNS, UNITS_RTOL, units_check
from deconcnn.sweep.state import STATES

KNEE_EPOCHS = (0.5, 20.0)
EARLY_EPOCHS = (5.0, 15.0)
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
    "final_loss_nats",
    "final_loss_n",
    "knee_step",
    "knee_epoch",
    "knee_step_lo",
    "knee_step_hi",
    "knee_epoch_lo",
    "knee_epoch_hi",
    "knee_boot_found",
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
    "alpha_full_boot_lo",
    "alpha_full_boot_hi",
    "c_full",
    "c_full_se",
    "r2_full",
    "alpha_full_reason",
    "alpha_early",
    "alpha_early_se",
    "alpha_early_lo",
    "alpha_early_hi",
    "alpha_early_c",
    "alpha_early_c_mode",
    "alpha_early_n_bins",
    "alpha_early_reason",
    *UNITS_COLUMNS,
    *PLATEAU_COLUMNS,
)
KNEE_TABLE_COLUMNS: tuple[str, ...] = (
    "candidate_step",
    "candidate_epoch",
    "n_bins",
    "aicc_power_law",
    "aicc_exponential",
    "aicc_broken_power_law",
    "chosen",
    "reason",
)


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


def analyze_run(
    steps: ArrayLike,
    loss_nats: ArrayLike,
    steps_per_epoch: float,
    *,
    loss_bits: ArrayLike | None = None,
    lr: ArrayLike | None = None,
    curvature_steps: ArrayLike | None = None,
    lambda_max: ArrayLike | None = None,
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    knee_epochs: tuple[float, float] = KNEE_EPOCHS,
    knee_per_decade: int = 10,
    early_epochs: tuple[float, float] = EARLY_EPOCHS,
    final_n: int | None = None,
    threshold: float = F.AIC_THRESHOLD,
    n_boot: int = 50,
    knee_boot: int = 30,
    units_rtol: float = UNITS_RTOL,
    seed: int = 0,
) -> dict[str, Any]:
    """Analyse one run's per-batch training loss (nats); never raises.

    Returns ``{"run": dict, "fits": [dict, dict, dict], "knee_table": [dict, ...]}`` with keys
    ``RUN_COLUMNS``, ``FIT_COLUMNS`` and ``KNEE_TABLE_COLUMNS`` (``docs/analysis.md``):

    1. Bin ``t = step + 1`` (``bins_per_decade``).
    2. Knee: :func:`fits.knee_by_aic` with candidate starts ``10^(j / knee_per_decade)``
       (moved up to bin edges) between ``knee_epochs`` (default epochs 0.5-20; windows shorter
       than ``fits.KNEE_MIN_BINS`` bins are skipped), and ``knee_boot`` bootstrap resamples for
       its interval.
    3. The three models on the bins from the knee to the end (from the first candidate, and
       ``start_rule = "first_candidate"``, when there is no knee), with ``n_boot``
       wild-bootstrap intervals; selection by AICc, threshold ``threshold``.
    4. ``alpha_full``: the power law's alpha there (NaN without a knee). ``alpha_early``:
       :func:`fits.alpha_window` on ``early_epochs`` (default 5-15) with the floor ``c`` (and its
       standard error) of that power-law fit, or ``c`` free when that fit failed.
    5. Units check (:func:`units.units_check`): the logged ``loss_bits`` against the nats, record
       by record and through the power-law fit, tolerance ``units_rtol``.
    6. ``lambda_max`` shape and plateau (:func:`plateau.plateau_row`, with ``lr`` when given).
    7. ``final_loss_nats``: mean of the last ``final_n`` losses (default one epoch:
       ``steps_per_epoch``).
    """
    run: dict[str, Any] = dict.fromkeys(RUN_COLUMNS, math.nan)
    run |= {
        "reason": "",
        "steps_per_epoch": float(steps_per_epoch),
        "knee_reason": "",
        "alpha_full_reason": "",
        "alpha_early_reason": "",
        "start_rule": "",
        "selected_model": None,
        "best_aicc_model": None,
        "alpha_early_c_mode": "",
        "units_agree": False,
    }
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(loss_nats, dtype=np.float64).reshape(-1)
    run["n_steps"] = int(y.size)
    spe_ok = steps_per_epoch > 0
    run |= plateau_row(curvature_steps, lambda_max, steps_per_epoch, lr_steps=steps if lr is not None else None, lr=lr)
    problem = curve_problem(s + 1, y) if spe_ok else "steps_per_epoch must be > 0"
    if problem:
        run |= {
            "reason": problem,
            "knee_reason": problem,
            "alpha_full_reason": problem,
            "alpha_early_reason": problem,
            "units_reason": problem,
        }
        no_sel: dict[str, Any] = {"delta": {}, "weight": {}, "chosen": None}
        failed = [
            _fit_row(F.failed_fit(m, problem), steps_per_epoch if spe_ok else math.nan, no_sel, "") for m in F.MODELS
        ]
        return {"run": run, "fits": failed, "knee_table": []}

    t = s + 1
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    n_final = int(final_n or round(steps_per_epoch))
    run["final_loss_nats"] = float(np.mean(y[-n_final:]))
    run["final_loss_n"] = min(n_final, int(y.size))

    curve = log_bins(t, y, bins_per_decade)
    lo_t, hi_t = (e * steps_per_epoch + 1 for e in knee_epochs)
    j = np.arange(math.ceil(knee_per_decade * math.log10(lo_t)), math.floor(knee_per_decade * math.log10(hi_t)) + 1)
    candidates = 10.0 ** (j / knee_per_decade)
    knee = F.knee_by_aic(
        t, y, candidates, threshold=threshold, bins_per_decade=bins_per_decade, n_boot=knee_boot, seed=seed
    )
    run["knee_reason"] = knee.reason
    if knee.knee_t is not None:
        k_step = knee.knee_t - 1
        run |= {"knee_step": k_step, "knee_epoch": k_step / steps_per_epoch, "knee_boot_found": knee.boot_found}
        if knee.lo is not None and knee.hi is not None:
            run |= {
                "knee_step_lo": knee.lo - 1,
                "knee_step_hi": knee.hi - 1,
                "knee_epoch_lo": (knee.lo - 1) / steps_per_epoch,
                "knee_epoch_hi": (knee.hi - 1) / steps_per_epoch,
            }
    start_rule = "knee" if knee.knee_t is not None else "first_candidate"
    first = knee.table[0]["t_start"] if knee.table else lo_t
    start = knee.knee_t if knee.knee_t is not None else first
    run |= {"fit_start_step": start - 1, "start_rule": start_rule}

    fits = F.fit_models(curve.window(start), n_boot=n_boot, seed=seed)
    sel = F.select_model(fits, threshold)
    run |= {"selected_model": sel["chosen"], "best_aicc_model": sel["best"]}
    for m in F.MODELS:
        run[f"weight_{m}"] = sel["weight"].get(m, math.nan)
    pl = fits[F.POWER_LAW]
    if pl.ok:
        run |= {"c_full": pl.params["c"], "c_full_se": pl.stderr["c"], "r2_full": pl.r2}
    if knee.knee_t is None:
        run["alpha_full_reason"] = f"no knee: {knee.reason}"
    elif not pl.ok:
        run["alpha_full_reason"] = pl.reason
    else:
        lo, hi = pl.ci["alpha"]
        blo, bhi = (pl.boot_ci or {}).get("alpha", (math.nan, math.nan))
        run |= {
            "alpha_full": pl.params["alpha"],
            "alpha_full_se": pl.stderr["alpha"],
            "alpha_full_lo": lo,
            "alpha_full_hi": hi,
            "alpha_full_boot_lo": blo,
            "alpha_full_boot_hi": bhi,
        }

    e0, e1 = early_epochs
    c_mode = "full_fit" if pl.ok else "free"
    early = F.alpha_window(
        t,
        y,
        e0 * steps_per_epoch + 1,
        e1 * steps_per_epoch,
        c=pl.params["c"] if pl.ok else None,
        c_se=pl.stderr["c"] if pl.ok else 0.0,
        bins_per_decade=bins_per_decade,
    )
    run |= {"alpha_early_c_mode": c_mode, "alpha_early_n_bins": early.n, "alpha_early_reason": early.reason}
    if early.ok:
        lo, hi = early.ci["alpha"]
        run |= {
            "alpha_early": early.params["alpha"],
            "alpha_early_se": early.stderr["alpha"],
            "alpha_early_lo": lo,
            "alpha_early_hi": hi,
            "alpha_early_c": early.params["c"],
        }

    bits = None if loss_bits is None else np.asarray(loss_bits, dtype=np.float64).reshape(-1)
    run |= units_check(
        y,
        bits[order] if bits is not None and bits.shape == s.shape else bits,
        lambda v: F.fit_power_law(log_bins(t, v, bins_per_decade).window(start)).params.get("alpha", math.nan),
        rtol=units_rtol,
    )

    rows = [_fit_row(fits[m], steps_per_epoch, sel, start_rule) for m in F.MODELS]
    table = [
        {
            "candidate_step": r["t_start"] - 1,
            "candidate_epoch": (r["t_start"] - 1) / steps_per_epoch,
            "n_bins": r["n_bins"],
            **{f"aicc_{m}": r[f"aicc_{m}"] for m in F.MODELS},
            "chosen": r["chosen"],
            "reason": r["reason"],
        }
        for r in knee.table
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
