"""One run's analysis rows and the summaries over runs, on planted answers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from deconcnn.analysis import fits as F
from deconcnn.analysis import slopes as S
from deconcnn.analysis.per_run import (
    ALPHA_EARLY_FLAG,
    ALPHA_FULL_FLAG,
    CURVE_FLAG,
    FIT_COLUMNS,
    FLAG_COLUMNS,
    KNEE_FLAG,
    KNEE_TABLE_COLUMNS,
    RUN_COLUMNS,
    analyze_run,
    compare_variants,
    predict,
    summarize_cells,
)
from deconcnn.runlog.states import STATES

SPE = 352  # batches per epoch: 45k / 128
STEPS = np.arange(50 * SPE)
T = STEPS + 1.0
T_BREAK, ALPHA1, ALPHA2, C = 800.0, 0.2, 0.9, 0.3


def broken_run(seed: int) -> np.ndarray:
    """Per-batch losses of a two-regime run (break at t = 800) with ~10% multiplicative noise."""
    u = np.log(T / T_BREAK)
    curve = C + 0.8 * np.exp(-ALPHA1 * np.minimum(u, 0) - ALPHA2 * np.maximum(u, 0))
    return curve * np.exp(0.1 * np.random.default_rng(seed).standard_normal(T.size) - 0.005)


@pytest.fixture(scope="module")
def result() -> dict:
    curv_steps = np.arange(0, STEPS.size, 500.0)
    lam = np.where(curv_steps < 3000, 10 + curv_steps / 100, 45.0)
    loss = broken_run(0)
    # no lr column: the time axis falls back to steps, where this curve was planted
    return analyze_run(
        STEPS, loss, SPE, loss_bits=loss / math.log(2), curvature_steps=curv_steps, lambda_max=lam, n_boot=20, seed=1
    )


def test_analyze_run_recovers_the_planted_run(result: dict) -> None:
    run = result["run"]
    assert run["reason"] == "" and run["n_steps"] == STEPS.size and run["time_axis"] == "steps"
    # knee: the break, found by the F test, with an interval around it
    assert run["knee_detected"] and run["knee_stat"] > S.KNEE_STAT
    assert abs(math.log10((run["knee_step"] + 1) / T_BREAK)) < 0.03
    assert run["knee_epoch"] == pytest.approx(run["knee_step"] / SPE)
    assert run["knee_step_lo"] <= run["knee_step"] <= run["knee_step_hi"]
    assert run["start_rule"] == "knee" and run["fit_start_step"] == pytest.approx(run["knee_step"], abs=1)
    # after the break the curve is a power law with alpha2 (coverage over many draws: test_slopes)
    assert run["selected_model"] == F.POWER_LAW
    assert run["alpha_full"] == pytest.approx(ALPHA2, abs=0.03)
    assert run["alpha_full_lo"] < run["alpha_full"] < run["alpha_full_hi"] and run["alpha_full_dof"] > 20
    assert run["c_full"] == pytest.approx(C, abs=0.01)
    assert run["alpha_early"] == pytest.approx(ALPHA2, abs=0.05)
    assert run["alpha_early_lo"] < run["alpha_early"] < run["alpha_early_hi"]
    assert run["alpha_early_c"] == pytest.approx(C, abs=0.02)
    assert run["alpha_early_n_bins"] >= 8
    assert all(run[f] == "" for f in FLAG_COLUMNS), {f: run[f] for f in FLAG_COLUMNS}
    assert run["units_agree"] and run["units_alpha_rel_diff"] <= 1e-6
    assert run["units_max_rel_diff"] <= 1e-12 and run["units_n"] == STEPS.size
    assert run["lambda_max_shape"] == "plateau"
    # a jump 40 -> 45 at step 3000, records every 500: the plateau within one record of it
    assert run["lambda_max_plateau_step"] == pytest.approx(3000, abs=500)
    assert run["lambda_max_plateau_step_lo"] <= run["lambda_max_plateau_step"] <= run["lambda_max_plateau_step_hi"]
    assert run["lambda_max_plateau_epoch"] == pytest.approx(run["lambda_max_plateau_step"] / SPE)
    assert run["final_loss_n"] == SPE
    assert run["final_loss_nats"] == pytest.approx(np.mean(broken_run(0)[-SPE:]))
    assert sum(run[f"weight_{m}"] for m in F.MODELS) == pytest.approx(1.0)


def test_analyze_run_rows_are_flat_tables(result: dict) -> None:
    assert list(result["run"]) == list(RUN_COLUMNS)
    assert set(FLAG_COLUMNS) <= set(RUN_COLUMNS)
    assert [r["model"] for r in result["fits"]] == list(F.MODELS)
    assert all(list(r) == list(FIT_COLUMNS) for r in result["fits"])
    assert all(list(r) == list(KNEE_TABLE_COLUMNS) for r in result["knee_table"])
    assert sum(r["selected"] for r in result["fits"]) == 1
    broken = result["fits"][2]
    assert broken["break_step_lo"] <= broken["break_step"] <= broken["break_step_hi"]
    assert broken["step_start"] == pytest.approx(result["run"]["knee_step"], abs=1)
    assert broken["epoch_end"] == pytest.approx((STEPS.size - 1) / SPE)
    assert result["knee_table"][0]["detected"] and result["knee_table"][0]["stat_crit"] == S.KNEE_STAT
    # the column sets convert to Arrow tables as they are
    for rows in ([result["run"]], result["fits"], result["knee_table"]):
        assert pa.Table.from_pylist(rows).num_rows == len(rows)


def _with(values: np.ndarray, at_epoch: float, value: float) -> np.ndarray:
    out = values.copy()
    out[int(at_epoch * SPE)] = value
    return out


@pytest.mark.parametrize(
    ("steps", "loss", "lr", "spe", "reason", "curve_flag"),
    [
        (STEPS, broken_run(1)[:-5], None, SPE, "different lengths", "different lengths: steps 17600, loss 17595"),
        (STEPS, broken_run(1), np.ones(10), SPE, "different lengths", "different lengths"),
        (STEPS[: 2 * SPE], broken_run(1)[: 2 * SPE], None, SPE, "short run: 2.00 < 3 epochs", "short run: 2.00"),
        (STEPS, broken_run(2), None, 0, "steps_per_epoch must be > 0", ""),
        (STEPS, _with(broken_run(3), 0, -1.0), None, SPE, "no usable values", "no usable values (non-positive"),
    ],
)
def test_analyze_run_failures_are_rows_with_reasons(steps, loss, lr, spe, reason, curve_flag) -> None:
    out = analyze_run(steps, loss, spe, lr=lr)
    run = out["run"]
    assert list(run) == list(RUN_COLUMNS) and len(out["fits"]) == 3
    assert run["reason"].startswith(reason) and run[CURVE_FLAG].startswith(curve_flag)
    assert math.isnan(run["knee_step"]) and run["knee_reason"]
    assert math.isnan(run["alpha_full"]) and run["alpha_full_reason"]
    assert math.isnan(run["alpha_early"]) and run["alpha_early_reason"]
    assert not run["units_agree"] and run["units_reason"]
    assert all(not r["ok"] and r["reason"] for r in out["fits"])
    assert pa.Table.from_pylist(out["fits"]).num_rows == 3


@pytest.mark.parametrize(
    ("bad", "what"), [(math.nan, "non-finite loss"), (math.inf, "non-finite loss"), (0.0, "non-positive loss")]
)
def test_a_bad_value_truncates_the_run_and_flags_every_value(bad: float, what: str) -> None:
    """A NaN/inf/0 at epoch 30 of a 'completed' run: analysed up to there, and every value says so."""
    out = analyze_run(STEPS, _with(broken_run(4), 30, bad), SPE)
    run = out["run"]
    assert run["reason"] == "" and run[CURVE_FLAG] == f"truncated at epoch 30.00 ({what})"
    assert run["alpha_early"] == pytest.approx(ALPHA2, abs=0.05)
    assert all(run[f].startswith("truncated at epoch 30.00") for f in (ALPHA_EARLY_FLAG, ALPHA_FULL_FLAG, KNEE_FLAG))


def test_a_run_shorter_than_the_early_window_has_no_alpha_early() -> None:
    out = analyze_run(STEPS[: 10 * SPE], broken_run(5)[: 10 * SPE], SPE)
    run = out["run"]
    assert run["reason"] == "" and run[CURVE_FLAG] == "short run: 10.00 epochs"
    assert math.isnan(run["alpha_early"]) and "before the window's end" in run["alpha_early_reason"]
    assert math.isfinite(run["alpha_full"]) and run[ALPHA_FULL_FLAG] == "short run: 10.00 epochs"


def test_analyze_run_of_an_exponential_flags_both_alphas() -> None:
    """A pure exponential: alpha numbers exist, but never unflagged."""
    loss = (C + 1.5 * np.exp(-T / 3000)) * np.exp(0.1 * np.random.default_rng(3).standard_normal(T.size) - 0.005)
    out = analyze_run(STEPS, loss, SPE)
    run = out["run"]
    assert run["selected_model"] == F.EXPONENTIAL
    assert "exponential fits better" in run[ALPHA_FULL_FLAG]
    assert "exponential fits better" in run[ALPHA_EARLY_FLAG]
    assert out["fits"][1]["tau"] == pytest.approx(3000, rel=0.05)
    assert run["lambda_max_plateau_reason"] == "no lambda_max given"


# ------------------------------------------------------------------------------- summaries
ALPHA_BY_CELL = {("A", 0.1): 0.5, ("A", 0.2): 0.7, ("B", 0.1): 0.9, ("B", 0.2): 1.1}
OFFSETS = np.array([-0.05, -0.02, 0.0, 0.01, 0.03, 0.06])


def planted_rows() -> list[dict]:
    """6 seeds per (variant, lr); some runs diverged, failed, missing or without an alpha."""
    rows = []
    for (variant, lr), alpha in ALPHA_BY_CELL.items():
        for seed, off in enumerate(OFFSETS):
            rows.append(
                {
                    "variant": variant,
                    "lr": lr,
                    "seed": seed,
                    "status": "completed",
                    "alpha_full": alpha + off,
                    "final_loss_nats": 0.1 * alpha,
                }
            )
    rows[6] |= {"status": "diverged", "alpha_full": math.nan}  # A, 0.2, seed 0
    rows[7] |= {"status": "missing", "alpha_full": None, "final_loss_nats": None}
    rows[12] |= {"status": "failed"}  # B, 0.1, seed 0: a value that must not be used
    rows[13] |= {"alpha_full": math.nan}  # completed, analysis failed
    rows[18] |= {"status": "running"}
    rows[19] |= {"status": "queued by hand"}  # not a state the sweep layer knows
    return rows


def test_summarize_cells_recovers_planted_medians_and_counts() -> None:
    out = summarize_cells(planted_rows(), ("variant", "lr"), ("alpha_full", "final_loss_nats"))
    assert [(r["variant"], r["lr"]) for r in out] == list(ALPHA_BY_CELL)
    by = {(r["variant"], r["lr"]): r for r in out}
    a1 = by[("A", 0.1)]
    assert a1["alpha_full_median"] == pytest.approx(0.5 + np.median(OFFSETS))
    assert a1["alpha_full_n"] == 6 and a1["n_completed"] == 6 and a1["n_runs"] == 6
    assert a1["alpha_full_iqr"] == pytest.approx(np.subtract(*np.percentile(OFFSETS, [75, 25])))
    a2 = by[("A", 0.2)]
    assert (a2["n_diverged"], a2["n_missing"], a2["n_completed"]) == (1, 1, 4)
    assert a2["alpha_full_median"] == pytest.approx(0.7 + np.median(OFFSETS[2:]))
    assert a2["alpha_full_n"] == 4 and a2["alpha_full_n_missing"] == 0
    b1 = by[("B", 0.1)]
    assert b1["n_failed"] == 1 and b1["alpha_full_n"] == 4 and b1["alpha_full_n_missing"] == 1
    assert b1["alpha_full_median"] == pytest.approx(0.9 + np.median(OFFSETS[2:]))
    assert b1["alpha_full_min"] == pytest.approx(0.9 + OFFSETS[2])
    b2 = by[("B", 0.2)]
    assert b2["n_running"] == 1 and b2["n_other"] == 1 and b2["n_completed"] == 4
    assert all(sum(r[f"n_{s}"] for s in STATES) + r["n_other"] == r["n_runs"] for r in out)
    assert b2["final_loss_nats_median"] == pytest.approx(0.11)


def test_compare_variants_effect_sizes() -> None:
    out = compare_variants(planted_rows(), "alpha_full", "A", by=("lr",))
    assert [(r["variant"], r["lr"]) for r in out] == [("B", 0.1), ("B", 0.2)]
    for r in out:
        assert r["baseline"] == "A" and r["key"] == "alpha_full" and r["reason"] == ""
        assert r["diff_mean"] == pytest.approx(0.4, abs=0.05) and r["hedges_g"] > 5
        assert r["g_lo"] > 0 and r["mw_p"] < 0.05
    assert (out[0]["n_a"], out[0]["n_b"]) == (4, 6)  # failed + NaN left out of B at 0.1
    pooled = compare_variants(planted_rows(), "alpha_full", "A", by=())
    assert len(pooled) == 1 and pooled[0]["n_a"] == 8 and pooled[0]["n_b"] == 10
    missing = compare_variants(planted_rows(), "alpha_full", "C", by=("lr",))
    assert all("need >= 2" in r["reason"] and r["n_b"] == 0 for r in missing)


def test_predict_draws_each_selected_model_through_its_bins():
    rng = np.random.default_rng(3)
    steps = np.arange(17_600)
    loss = (0.1 + 2.3 * (steps + 1.0) ** -0.6) * np.exp(0.05 * rng.standard_normal(steps.size))
    out = analyze_run(steps, loss, 352)
    for row in out["fits"]:
        if row["ok"]:
            inside = (steps >= row["step_start"]) & (steps <= row["step_end"])
            curve = predict(row, steps[inside])
            rel = np.median(np.abs(curve - loss[inside]) / loss[inside])
            assert rel < 0.06, (row["model"], rel)  # the noise is 5%: the curve goes through the data


def test_steps_before_the_first_nonzero_lr_are_left_off_the_log_axis() -> None:
    lr = np.r_[np.zeros(10), np.full(STEPS.size - 10, 0.1)]
    out = analyze_run(STEPS, broken_run(6), SPE, lr=lr)
    run = out["run"]
    assert run["reason"] == "" and run["time_axis"] == "tau" and run[CURVE_FLAG] == ""
    assert math.isfinite(run["alpha_full"]) and math.isfinite(run["alpha_early"])


def test_flagged_values_are_left_out_of_summaries_and_comparisons_and_counted() -> None:
    rows = planted_rows()
    rows[0] |= {"alpha_full": 50.0, "alpha_full_flag": "window model is exponential"}  # A, 0.1
    rows[1] |= {"alpha_full": -50.0, "curve_flag": "truncated at step 9000 (non-finite loss)"}
    rows[2] |= {"alpha_early_flag": "break inside the window"}  # flags another value: alpha_full kept
    out = summarize_cells(rows, ("variant", "lr"), ("alpha_full", "final_loss_nats"))
    a1 = next(r for r in out if (r["variant"], r["lr"]) == ("A", 0.1))
    assert a1["alpha_full_n"] == 4 and a1["alpha_full_n_flagged"] == 2
    assert a1["alpha_full_median"] == pytest.approx(0.5 + np.median(OFFSETS[2:]))
    assert a1["final_loss_nats_n"] == 5 and a1["final_loss_nats_n_flagged"] == 1  # the curve flag only
    comp = compare_variants(rows, "alpha_full", "A", by=("lr",))
    assert (comp[0]["n_b"], comp[0]["n_flagged_b"], comp[0]["n_flagged_a"]) == (4, 2, 0)
