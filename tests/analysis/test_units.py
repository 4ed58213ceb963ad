"""The units check reads the logged bits column: a right one agrees, a wrong one fails."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deconcnn.analysis.per_run import analyze_run
from deconcnn.analysis.units import UNITS_COLUMNS, units_check

SPE = 352
STEPS = np.arange(20 * SPE)


def loss() -> np.ndarray:
    t = STEPS + 1.0
    return (0.1 + 2.3 * t**-0.6) * np.exp(0.1 * np.random.default_rng(0).standard_normal(t.size) - 0.005)


def test_right_bits_agree_and_an_affine_bits_column_fails() -> None:
    nats = loss()
    right = units_check(nats, nats / math.log(2), lambda v: float(np.polyfit(np.log(STEPS + 1), np.log(v), 1)[0]))
    assert right["units_agree"] and right["units_reason"] == "" and set(right) == set(UNITS_COLUMNS)
    assert right["units_bits_per_nat"] == pytest.approx(1 / math.log(2)) and right["units_max_rel_diff"] < 1e-12
    wrong = units_check(nats, 3 * nats + 0.5)
    assert not wrong["units_agree"] and "not loss_train_nats / ln 2" in wrong["units_reason"]
    assert wrong["units_bits_per_nat"] > 3
    off_by_one = nats / math.log(2)
    off_by_one[100] *= 1.001  # one record in 7,000 is enough
    assert "at 1 of" in units_check(nats, off_by_one)["units_reason"]


def test_a_wrong_bits_column_fails_the_check_of_analyze_run() -> None:
    nats = loss()
    ok = analyze_run(STEPS, nats, SPE, loss_bits=nats / math.log(2), n_boot=0)["run"]
    assert ok["units_agree"] and ok["units_alpha_rel_diff"] <= 1e-9
    bad = analyze_run(STEPS, nats, SPE, loss_bits=3 * nats + 0.5, n_boot=0)["run"]
    assert not bad["units_agree"] and "not loss_train_nats / ln 2" in bad["units_reason"]
    assert bad["alpha_full"] == ok["alpha_full"]  # the fits are untouched by the check


def test_missing_or_mismatched_bits_give_a_reason() -> None:
    nats = loss()
    assert units_check(nats, None)["units_reason"] == "no loss_train_bits logged"
    assert "differ in length" in units_check(nats, nats[:-1])["units_reason"]
    assert "no record" in units_check(nats, np.full(nats.shape, np.nan))["units_reason"]
    assert not analyze_run(STEPS, nats, SPE, n_boot=0)["run"]["units_agree"]
