"""Known-answer tests of the correlation, effect-size and spread statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deconcnn.analysis.stats import (
    CORRELATION_KEYS,
    EFFECT_KEYS,
    correlation,
    effect_size,
    median_spread,
    partial_correlation,
)


def test_correlation_intervals_cover_the_truth() -> None:
    """200 bivariate-normal samples of n = 30 at rho = 0.5: both intervals cover ~95%."""
    rho, n, draws = 0.5, 30, 200
    spearman_truth = 6 / math.pi * math.asin(rho / 2)  # Spearman's rho of a bivariate normal
    rng = np.random.default_rng(0)
    cov = [[1.0, rho], [rho, 1.0]]
    hits_p, hits_s = 0, 0
    for _ in range(draws):
        x, y = rng.multivariate_normal([0.0, 0.0], cov, size=n).T
        res = correlation(x, y)
        hits_p += res["pearson_lo"] <= rho <= res["pearson_hi"]
        hits_s += res["spearman_lo"] <= spearman_truth <= res["spearman_hi"]
    print(f"correlation CI coverage: Pearson {hits_p / draws:.3f}, Spearman {hits_s / draws:.3f}")
    assert hits_p / draws >= 0.88 and hits_s / draws >= 0.88


def test_correlation_values_nan_pairs_and_too_few() -> None:
    x = np.arange(10.0)
    y = 2 * x + 1
    y[3] = np.nan
    res = correlation(x, y)
    assert set(res) == set(CORRELATION_KEYS)
    assert res["n"] == 9 and res["reason"] == ""
    assert res["pearson_r"] == pytest.approx(1.0) and res["spearman_rho"] == pytest.approx(1.0)
    assert res["pearson_p"] < 1e-6
    # a perfect correlation gives a point interval, not a crash
    assert res["pearson_lo"] == pytest.approx(1.0)
    few = correlation([1.0, 2.0, np.nan, 4.0, 5.0], [2.0, 1.0, 3.0, np.nan, 4.0])
    assert few["n"] == 3 and math.isnan(few["pearson_r"]) and "3 finite pairs" in few["reason"]
    flat = correlation(np.ones(8), np.arange(8.0))
    assert math.isnan(flat["spearman_rho"]) and "constant" in flat["reason"]
    assert "differ in length" in correlation([1.0, 2.0], [1.0])["reason"]
    # independent samples: r near 0, p not small
    rng = np.random.default_rng(1)
    ind = correlation(rng.standard_normal(200), rng.standard_normal(200))
    assert ind["pearson_lo"] < 0 < ind["pearson_hi"] and ind["pearson_p"] > 0.05


def test_effect_size_sign_magnitude_and_coverage() -> None:
    """Six seeds per group, shift delta = 1 sd: Hedges' g ~ 1 on average, CI covers ~95%."""
    rng = np.random.default_rng(2)
    delta, draws = 1.0, 200
    gs, hits = [], 0
    for _ in range(draws):
        res = effect_size(rng.normal(delta, 1.0, 6), rng.normal(0.0, 1.0, 6))
        gs.append(res["hedges_g"])
        hits += res["g_lo"] <= delta <= res["g_hi"]
    print(f"Hedges g: mean {np.mean(gs):.3f} (truth {delta}), CI coverage {hits / draws:.3f}")
    assert abs(np.mean(gs) - delta) < 0.1
    assert hits / draws >= 0.90
    assert np.mean(np.array(gs) > 0) > 0.9


def test_effect_size_clear_shift_and_edge_cases() -> None:
    a = np.array([2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    b = a - 1.0
    res = effect_size(a, b)
    assert set(res) == set(EFFECT_KEYS) and res["reason"] == ""
    assert res["diff_mean"] == pytest.approx(1.0) and res["hedges_g"] > 4
    assert res["g_lo"] > 0 and res["mw_u"] == 36 and res["mw_p"] == pytest.approx(2 / 924)
    assert res["welch_p"] < 1e-4
    assert effect_size(b, a)["hedges_g"] == pytest.approx(-res["hedges_g"])
    few = effect_size([1.0, np.nan], [1.0, 2.0, 3.0])
    assert few["n_a"] == 1 and math.isnan(few["hedges_g"]) and ">= 2 finite" in few["reason"]
    const = effect_size([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert math.isnan(const["hedges_g"]) and "zero variance" in const["reason"]
    assert const["mw_p"] < 0.2 and const["diff_mean"] == -1.0


def test_median_spread() -> None:
    res = median_spread([5.0, 1.0, np.nan, 3.0, 2.0, 4.0, None])
    assert res == {"n": 5, "n_nan": 2, "median": 3.0, "q25": 2.0, "q75": 4.0, "iqr": 2.0, "min": 1.0, "max": 5.0}
    empty = median_spread([np.nan])
    assert empty["n"] == 0 and empty["n_nan"] == 1 and math.isnan(empty["median"])


def test_partial_correlation_on_cells_removes_a_correlation_that_runs_through_the_grid() -> None:
    """Both variables rise with the cell (like alpha and psd_tail with lr); within cells they are
    independent (pooled r ~ 0.98, partial ~ 0), or correlated at 0.6 (partial finds it)."""
    rng = np.random.default_rng(0)
    cells = np.repeat(np.arange(9), 6)  # 9 cells x 6 seeds
    x0, y0, y1 = (rng.standard_normal(cells.size) for _ in range(3))
    x = 5 * cells + x0
    groups = [(c, "v") for c in cells]
    pooled = correlation(x, 5 * cells + y0)
    part = partial_correlation(x, 5 * cells + y0, groups)
    assert pooled["pearson_r"] > 0.95
    assert part["pearson_lo"] < 0 < part["pearson_hi"] and (part["n"], part["n_cells"]) == (54, 9)
    linked = partial_correlation(x, 5 * cells + 0.6 * x0 + 0.8 * y1, groups)
    assert linked["pearson_lo"] > 0.3 and linked["spearman_lo"] > 0.2
    singles = partial_correlation([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], [0, 1, 2])
    assert math.isnan(singles["pearson_r"]) and "cells" in singles["reason"]


def test_partial_correlation_intervals_cover_the_within_cell_truth() -> None:
    rng = np.random.default_rng(1)
    cells = np.repeat(np.arange(9), 6)
    hits = 0
    for _ in range(200):
        a, b = rng.standard_normal((2, cells.size))
        res = partial_correlation(3 * cells + a, 2 * cells + 0.5 * a + math.sqrt(0.75) * b, list(cells))
        hits += res["pearson_lo"] <= 0.5 <= res["pearson_hi"]
    assert hits >= 180  # 95% nominal
