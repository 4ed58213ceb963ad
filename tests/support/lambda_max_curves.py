"""lambda_max series shaped like the sweep's: the known answers of the plateau detector.

The experiment's own schedule (deconcnn.training.module.warmup_cosine: 5-epoch linear warm-up from
0, cosine to 0 at epoch 50, 352 steps per epoch) and its curvature cadence (a record every 500
steps: 35 per run), with multiplicative noise ``(1 + noise z)``, ``z`` iid N(0, 1). Used by
tests/analysis/test_plateau.py (a few draws) and benchmarks/plateau_detection.py (>= 100 draws).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deconcnn.training.module import warmup_cosine

SPE = 352
EPOCHS = 50
WARMUP_EPOCHS = 5
EVERY = 500
PEAK_LR = 0.1
LEVEL = 40.0  # the plateau's lambda_max
START = 0.3  # the rise starts at this fraction of the plateau

STEPS = np.arange(SPE * EPOCHS, dtype=np.float64)
RECORDS = np.arange(EVERY, SPE * EPOCHS, EVERY, dtype=np.float64)


def lr_schedule(steps: np.ndarray = STEPS) -> np.ndarray:
    """The logged lr at each step (the trainer's own warm-up + cosine multiplier)."""
    total, warm = SPE * EPOCHS, SPE * WARMUP_EPOCHS
    return PEAK_LR * np.array([warmup_cosine(int(s), warm, total) for s in steps])


LR = lr_schedule()


def linear_rise(plateau_epoch: float) -> Callable[[np.ndarray], np.ndarray]:
    """From START x LEVEL at step 0, linearly up to LEVEL at ``plateau_epoch``, then flat."""
    p = plateau_epoch * SPE
    return lambda s: LEVEL * (START + (1 - START) * np.minimum(s / p, 1.0))


def exponential_rise(plateau_epoch: float) -> Callable[[np.ndarray], np.ndarray]:
    """Log-linear from START x LEVEL to LEVEL at ``plateau_epoch`` (progressive sharpening), then flat."""
    p = plateau_epoch * SPE
    return lambda s: LEVEL * START ** (1 - np.minimum(s / p, 1.0))


def tracks_two_over_lr(sharpening_epochs: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Edge of stability: sharpening (x e per ``sharpening_epochs``) capped by 2/lr(t), which the
    cosine decay keeps raising to the end."""
    lr = lr_schedule(RECORDS)
    return lambda s: np.minimum(
        0.1 * (2 / PEAK_LR) * np.exp(s / (sharpening_epochs * SPE)), 2 / np.interp(s, RECORDS, lr)
    )


def steady_rise(power: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
    """Rising to the end, ``LEVEL (t / T)^power``: no plateau."""
    return lambda s: LEVEL * (s / (SPE * EPOCHS)) ** power


def flat() -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.full(s.shape, LEVEL)


def draw(curve: Callable[[np.ndarray], np.ndarray], noise: float, rng: np.random.Generator) -> np.ndarray:
    """lambda_max at the records, with ``noise`` relative scatter."""
    return curve(RECORDS) * (1 + noise * rng.standard_normal(RECORDS.size))
