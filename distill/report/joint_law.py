"""The joint scaling law in parameters and data, for predicting a rung that has not run.

Hoffmann et al. 2022 (approach 3) model the loss of a model of N parameters trained on D tokens as
E(N, D) = e + A N^(-alpha) + B D^(-beta): an irreducible term, a capacity term and a data term,
fitted on all runs at once. Here it is fitted to test error (or test cross-entropy) against the
student's parameters N and the images it was trained on D, over every run of one method, so the
exponents are shared across budgets and one rung can be held out and predicted from the others.
`distill.report.fits` fits one variable at a time (Zhai et al.'s saturating law).

Fitted with `scipy.optimize.least_squares` from a grid of starting exponents (few points, five
parameters: one start can stall), on N / N_min and D / D_min so the optimiser sees numbers near 1;
bootstrap over runs (resampled with replacement) gives percentile intervals and prediction bands.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.optimize import least_squares

NAMES = ("e", "A", "alpha", "B", "beta")
LAW = "E(N, D) = e + A * N**(-alpha) + B * D**(-beta)"
_EXP_STARTS = (0.1, 0.3, 0.6, 1.0)
_EXP_MAX = 3.0


def joint_law(n, d, e, a, alpha, b, beta):
    """E(N, D) = e + A N^-alpha + B D^-beta, elementwise."""
    return e + a * np.asarray(n, float) ** (-alpha) + b * np.asarray(d, float) ** (-beta)


@dataclass
class JointFit:
    """A fitted joint law, parameters in the original units of N and D; `draws` (k, 5) the
    bootstrap refits in the order of NAMES."""

    params: dict
    n_points: int
    rmse: float
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 5)))

    def predict(self, n, d):
        return joint_law(n, d, *(self.params[k] for k in NAMES))

    def band(self, n, d, level: float = 0.95) -> tuple:
        """Percentile band (low, high) of the prediction at (n, d) over the bootstrap refits."""
        if len(self.draws) == 0:
            return self.predict(n, d), self.predict(n, d)
        preds = np.array([joint_law(n, d, *row) for row in self.draws])
        lo, hi = np.percentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi

    def ci(self, name: str, level: float = 0.95) -> tuple:
        column = self.draws[:, NAMES.index(name)]
        lo, hi = np.percentile(column, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        has = len(self.draws) > 0
        return {"law": LAW, "params": {k: float(v) for k, v in self.params.items()},
                "ci95": {k: (list(self.ci(k)) if has else None) for k in NAMES},
                "n_points": self.n_points, "rmse": self.rmse, "bootstrap": int(len(self.draws))}


def _solve(n, d, y, starts=None):
    """Least squares on scaled N, D from `starts` (default: a grid of exponents); scaled units."""
    floor = max(float(y.min()), 1e-9)
    span = max(float(y.max() - floor), 1e-6)
    if starts is None:
        starts = [[0.5 * floor, span, alpha, span, beta] for alpha, beta in product(_EXP_STARTS, _EXP_STARTS)]

    def residual(q):
        return joint_law(n, d, *q) - y

    best = None
    for start in starts:
        start = np.clip(start, 0, [floor, np.inf, _EXP_MAX, np.inf, _EXP_MAX])
        fit = least_squares(residual, start, bounds=([0, 0, 0, 0, 0], [floor, np.inf, _EXP_MAX, np.inf, _EXP_MAX]))
        if best is None or fit.cost < best.cost:
            best = fit
    return best.x


def _to_original(q, n_ref: float, d_ref: float) -> np.ndarray:
    e, a, alpha, b, beta = q  # A (N/N_ref)^-alpha = (A N_ref^alpha) N^-alpha
    return np.array([e, a * n_ref ** alpha, alpha, b * d_ref ** beta, beta])


def fit_joint_law(n, d, y, bootstrap: int = 500, seed: int = 0) -> JointFit:
    """Fit E(N, D) to points (n[i], d[i], y[i]); at least 6 points over at least 2 values of each of
    N and D (five parameters), else ValueError."""
    n, d, y = (np.asarray(v, float) for v in (n, d, y))
    if len(y) < 6 or len(set(n)) < 2 or len(set(d)) < 2:
        raise ValueError(f"the joint law has 5 parameters: it needs >= 6 points over >= 2 sizes and >= 2 budgets, "
                         f"got {len(y)} points, {len(set(n))} sizes, {len(set(d))} budgets")
    n_ref, d_ref = float(n.min()), float(d.min())
    q = _solve(n / n_ref, d / d_ref, y)
    params = dict(zip(NAMES, _to_original(q, n_ref, d_ref)))
    rmse = float(np.sqrt(np.mean((joint_law(n, d, *params.values()) - y) ** 2)))
    rng, draws = np.random.default_rng(seed), []
    for _ in range(bootstrap):
        i = rng.integers(0, len(y), len(y))
        if len(set(n[i])) >= 2 and len(set(d[i])) >= 2:
            # from the full fit's solution: a resample is close to the data (and 16 starts each cost 16x)
            draws.append(_to_original(_solve(n[i] / n_ref, d[i] / d_ref, y[i], [q]), n_ref, d_ref))
    return JointFit(params, len(y), rmse, np.array(draws).reshape(-1, 5))
