"""Loss-curve analysis as plain functions (numpy + scipy only): binning, fits, statistics.

Rules, formulas and output columns: ``docs/analysis.md``.
"""

from deconcnn.analysis.curves import Binned, curve_problem, log_bins, time_axis
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
from deconcnn.analysis.per_run import (
    ALPHA_EARLY_FLAG,
    ALPHA_FULL_FLAG,
    CURVE_FLAG,
    FLAG_COLUMNS,
    FLAGGED_VALUES,
    KNEE_FLAG,
    analyze_run,
    compare_variants,
    summarize_cells,
)
from deconcnn.analysis.slopes import KNEE_STAT, early_slope, full_slope, hac_se, knee_test
from deconcnn.analysis.stats import correlation, effect_size, median_spread, plateau_step

__all__ = [
    "ALPHA_EARLY_FLAG",
    "ALPHA_FULL_FLAG",
    "CURVE_FLAG",
    "FLAGGED_VALUES",
    "FLAG_COLUMNS",
    "KNEE_FLAG",
    "KNEE_STAT",
    "Binned",
    "Fit",
    "Knee",
    "alpha_window",
    "analyze_run",
    "compare_units",
    "compare_variants",
    "correlation",
    "curve_problem",
    "early_slope",
    "effect_size",
    "fit_broken_power_law",
    "fit_exponential",
    "fit_models",
    "fit_power_law",
    "full_slope",
    "hac_se",
    "knee_by_aic",
    "knee_test",
    "log_bins",
    "median_spread",
    "plateau_step",
    "select_model",
    "summarize_cells",
    "time_axis",
    "units_check",
    "window_scan",
]
