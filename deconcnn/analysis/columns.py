"""Flag columns of a run row, and how summaries read them.

A flag is a string column: ``""`` when the value it names is fine, otherwise short reasons joined
by ``FLAG_SEP``. ``curve_flag`` concerns the whole run (truncated by a non-finite loss, non-positive
losses, a short run or one of a different length); the others concern one value and every value
whose name starts with the flag's stem (``knee_flag`` -> ``knee_epoch``, ``knee_step``, ...).
Summaries, heat maps, comparisons and correlations leave a flagged value out and count it
(:func:`value_flags`): no flagged number goes into a median.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLAG_SUFFIX = "_flag"
FLAG_SEP = "; "
ALPHA_EARLY_FLAG = "alpha_early_flag"
ALPHA_FULL_FLAG = "alpha_full_flag"
KNEE_FLAG = "knee_flag"
CURVE_FLAG = "curve_flag"
FLAG_COLUMNS = (ALPHA_EARLY_FLAG, ALPHA_FULL_FLAG, KNEE_FLAG, CURVE_FLAG)


def add_flag(row: dict[str, Any], flag: str, reason: str) -> None:
    """Append ``reason`` to ``row[flag]`` (kept once)."""
    have = [r for r in str(row.get(flag) or "").split(FLAG_SEP) if r]
    if reason not in have:
        row[flag] = FLAG_SEP.join([*have, reason])


def value_flags(row: Mapping[str, Any], key: str) -> list[str]:
    """The non-empty flags that apply to value ``key`` of ``row``: the run's ``curve_flag`` and every
    ``<stem>_flag`` column whose stem is ``key`` or a prefix of it at a ``_`` boundary."""
    out = []
    for col, reason in row.items():
        if not col.endswith(FLAG_SUFFIX) or not reason:
            continue
        stem = col[: -len(FLAG_SUFFIX)]
        if col == CURVE_FLAG or key == stem or key.startswith(stem + "_"):
            out.append(f"{col}: {reason}")
    return out
