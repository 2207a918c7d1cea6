"""Figures for the benchmarks: percentiles and rounding (no Django, no test code)."""

from __future__ import annotations


def pct(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile of ``values`` (linear interpolation), None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)
