"""Loss-curve analysis as plain functions (numpy + scipy only): binning, fits, statistics.

Rules, formulas and output columns: ``docs/analysis.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: The modules the names below come from: imported on first use, so `import deconcnn.analysis.x`
#: (the CLI's constants, status) does not load scipy with the fits.
_MODULES = ("columns", "curves", "fits", "per_run", "plateau", "slopes", "stats", "units")

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            found = importlib.import_module(f"{__name__}.{module}")
            if hasattr(found, name):
                return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
