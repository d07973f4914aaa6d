"""Small-sample statistics for comparing variants over seeds, from `scipy.stats`.

Seeds are few (3 to 10), so intervals use Student's t. A difference between two variants uses a
paired t-interval on the per-seed differences where the runs pair (the same seeds on the same
views: each pair shares initialisation and data order, so their noise partly cancels), and
Welch's interval (no equal-variance assumption) otherwise.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from scipy import stats as st

PAIRED, WELCH = "paired t", "Welch t"  # the test's name, as the report prints it


def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _half(interval) -> float:
    return float(interval.high - interval.low) / 2


def diff_ci(a: Sequence[float], b: Sequence[float]) -> tuple:
    """mean(a) - mean(b) and the half-width of Welch's 95% interval for it (Welch-Satterthwaite df)."""
    d = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.inf
    if std(a) == 0 and std(b) == 0:
        return d, 0.0
    return d, _half(st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95))


def paired_diff_ci(a: Sequence[float], b: Sequence[float]) -> tuple:
    """mean(a - b) over pairs (a[i], b[i]: the same seed) and the half-width of its 95% t-interval
    (n - 1 df, the spread of the differences)."""
    if len(a) != len(b):
        raise ValueError(f"a paired comparison needs one b per a: got {len(a)} and {len(b)} values")
    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2 or std(diffs) == 0:
        return mean(diffs), (math.inf if len(diffs) < 2 else 0.0)
    return mean(diffs), _half(st.ttest_rel(a, b).confidence_interval(0.95))
