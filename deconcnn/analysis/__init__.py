"""Loss-curve analysis as plain functions (numpy + scipy only): binning, fits, statistics.

Rules, formulas and output columns: ``docs/analysis.md``.
"""

from deconcnn.analysis.curves import Binned, curve_problem, log_bins
from deconcnn.analysis.fits import (
    Fit,
    Knee,
    alpha_window,
    compare_units,
    fit_broken_power_law,
    fit_exponential,
    fit_models,
    fit_power_law,
    knee_by_aic,
    select_model,
    units_check,
    window_scan,
)
from deconcnn.analysis.per_run import analyze_run, compare_variants, summarize_cells
from deconcnn.analysis.plateau import detect_plateau
from deconcnn.analysis.stats import correlation, effect_size, median_spread

__all__ = [
    "Binned",
    "Fit",
    "Knee",
    "alpha_window",
    "analyze_run",
    "compare_units",
    "compare_variants",
    "correlation",
    "curve_problem",
    "detect_plateau",
    "effect_size",
    "fit_broken_power_law",
    "fit_exponential",
    "fit_models",
    "fit_power_law",
    "knee_by_aic",
    "log_bins",
    "median_spread",
    "select_model",
    "summarize_cells",
    "units_check",
    "window_scan",
]
