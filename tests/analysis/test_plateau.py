"""The lambda_max plateau detector on series shaped like the sweep's (warm-up + cosine lr, a record
every 500 steps, 5-10% noise): planted plateaus found within +/-2 epochs with an interval, and
what is not a plateau (tracking 2/lr, still rising) named as such. Full Monte Carlo:
benchmarks/plateau_detection.py."""

from __future__ import annotations

import math

import lambda_max_curves as C
import numpy as np
import pytest

from deconcnn.analysis.plateau import (
    PLATEAU_COLUMNS,
    SHAPE_FLAT,
    SHAPE_PLATEAU,
    SHAPE_RISING,
    SHAPE_TRACKS_LR,
    detect_plateau,
    plateau_row,
)

DRAWS = 40


@pytest.mark.parametrize("noise", [0.05, 0.10])
@pytest.mark.parametrize("rise", [C.linear_rise, C.exponential_rise])
def test_a_planted_plateau_is_found_within_two_epochs_with_an_interval(rise, noise) -> None:
    rng = np.random.default_rng(1)
    near = covered = 0
    for _ in range(DRAWS):
        p = detect_plateau(C.RECORDS, C.draw(rise(4.6), noise, rng), lr_steps=C.STEPS, lr=C.LR)
        if p.shape == SHAPE_PLATEAU:
            assert p.step is not None and p.lo is not None and p.hi is not None and p.lo <= p.step <= p.hi
            near += abs(p.step / C.SPE - 4.6) <= 2
            covered += p.lo <= 4.6 * C.SPE <= p.hi
            assert p.value == pytest.approx(C.LEVEL, rel=0.1)
    assert near >= 0.9 * DRAWS
    assert covered >= 0.75 * DRAWS  # benchmark, 200 draws: 85-90%


@pytest.mark.parametrize("noise", [0.05, 0.10])
def test_lambda_max_tracking_two_over_lr_is_not_a_plateau(noise) -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        p = detect_plateau(C.RECORDS, C.draw(C.tracks_two_over_lr(), noise, rng), lr_steps=C.STEPS, lr=C.LR)
        assert p.shape == SHAPE_TRACKS_LR and p.step is None
        assert p.lr_product == pytest.approx(2.0, rel=0.1)  # lambda_max * lr at the edge of stability
        assert "edge of stability" in p.reason


def test_without_the_lr_a_series_rising_to_the_end_is_rising_not_a_plateau() -> None:
    rng = np.random.default_rng(3)
    shapes = [detect_plateau(C.RECORDS, C.draw(C.steady_rise(0.5), 0.05, rng)).shape for _ in range(20)]
    assert shapes.count(SHAPE_RISING) >= 18
    two_over_lr = detect_plateau(C.RECORDS, C.draw(C.tracks_two_over_lr(), 0.05, rng))
    assert two_over_lr.shape == SHAPE_RISING and two_over_lr.step is None


def test_flat_series_plateau_is_at_the_first_record_and_noise_outliers_do_not_move_it() -> None:
    rng = np.random.default_rng(4)
    v = C.draw(C.flat(), 0.05, rng)
    p = detect_plateau(C.RECORDS, v)
    assert (p.shape, p.step, p.lo) == (SHAPE_FLAT, C.RECORDS[0], 0.0)
    planted = C.draw(C.linear_rise(4.6), 0.05, rng)
    planted[-3] *= 1.3  # one late outlier: the old within-10%-of-later-median rule jumped to the end
    late = detect_plateau(C.RECORDS, planted)
    assert late.shape == SHAPE_PLATEAU and abs(late.step / C.SPE - 4.6) <= 2


def test_bad_input_gives_a_reason_and_the_row_has_every_column() -> None:
    assert "differ in length" in detect_plateau([1.0], [1.0, 2.0]).reason
    few = detect_plateau(C.RECORDS[:5], [1.0, math.nan, -1.0, 2.0, 3.0])
    assert few.shape == "" and "3 usable points" in few.reason and "2 non-finite or non-positive" in few.reason
    row = plateau_row(None, None, 352)
    assert set(row) == set(PLATEAU_COLUMNS) and row["lambda_max_plateau_reason"] == "no lambda_max given"
    rng = np.random.default_rng(5)
    row = plateau_row(C.RECORDS, C.draw(C.linear_rise(4.6), 0.05, rng), C.SPE, lr_steps=C.STEPS, lr=C.LR)
    assert row["lambda_max_shape"] == SHAPE_PLATEAU and row["lambda_max_n"] == C.RECORDS.size
    assert row["lambda_max_plateau_epoch_lo"] <= row["lambda_max_plateau_epoch"] <= row["lambda_max_plateau_epoch_hi"]
    assert row["lambda_max_plateau_epoch"] == pytest.approx(row["lambda_max_plateau_step"] / C.SPE)
