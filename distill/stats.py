"""Small-sample statistics for comparing variants over seeds.

Seeds are few (3 to 10), so intervals use Student's t, and a difference between two variants
uses Welch's interval (no equal-variance assumption). The t quantiles are the standard table
values: scipy would be one more heavy dependency for nine numbers.
"""
from __future__ import annotations

import math
from typing import Sequence

# Two-sided 95% quantiles t_{0.975, df}.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: float) -> float:
    """t quantile for a 95% two-sided interval; fractional df (Welch) round down, to be conservative."""
    if df < 1:
        return math.inf
    df = math.floor(df)
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k <= df)
    return _T975[below] if df < 120 else 1.960


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def mean_ci(xs: Sequence[float]) -> tuple:
    """(mean, half-width of its 95% t-interval); the half-width is inf for one value."""
    n = len(xs)
    half = t975(n - 1) * std(xs) / math.sqrt(n) if n > 1 else math.inf
    return mean(xs), half


def diff_ci(a: Sequence[float], b: Sequence[float]) -> tuple:
    """mean(a) - mean(b) and the half-width of Welch's 95% interval for it."""
    d = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.inf
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    return d, t975(df) * se
