"""Loss-curve analysis as plain functions (numpy + scipy only): binning, fits, statistics.

Rules, formulas and output columns: ``docs/analysis.md``.
"""

from deconcnn.analysis.columns import (
    ALPHA_EARLY_FLAG,
    ALPHA_FULL_FLAG,
    CURVE_FLAG,
    FLAG_COLUMNS,
    KNEE_FLAG,
    value_flags,
)
from deconcnn.analysis.curves import Binned, curve_problem, log_bins, time_axis
from deconcnn.analysis.fits import (
    Fit,
    alpha_window,
    fit_broken_power_law,
    fit_exponential,
    fit_models,
    fit_power_law,
    select_model,
    window_scan,
)
from deconcnn.analysis.per_run import analyze_run, compare_variants, summarize_cells
from deconcnn.analysis.plateau import detect_plateau
from deconcnn.analysis.slopes import KNEE_STAT, early_slope, full_slope, hac_se, knee_test
from deconcnn.analysis.stats import correlation, effect_size, median_spread
from deconcnn.analysis.units import units_check

__all__ = [
    "ALPHA_EARLY_FLAG",
    "ALPHA_FULL_FLAG",
    "CURVE_FLAG",
    "FLAG_COLUMNS",
    "KNEE_FLAG",
    "KNEE_STAT",
    "Binned",
    "Fit",
    "alpha_window",
    "analyze_run",
    "compare_variants",
    "correlation",
    "curve_problem",
    "detect_plateau",
    "early_slope",
    "effect_size",
    "fit_broken_power_law",
    "fit_exponential",
    "fit_models",
    "fit_power_law",
    "full_slope",
    "hac_se",
    "knee_test",
    "log_bins",
    "median_spread",
    "select_model",
    "summarize_cells",
    "time_axis",
    "units_check",
    "value_flags",
    "window_scan",
]
