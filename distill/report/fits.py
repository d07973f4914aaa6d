"""Scaling laws for a scaling study: power-law fits with bootstrap intervals, IsoFLOP optima and
the compute where distillation stops paying.

- Zhai et al. 2022 (Scaling Vision Transformers): test error against compute follows a saturating
  power law E(C) = a (C + d)^(-b) + c, with c the irreducible error and d an offset for small C.
- Hoffmann et al. 2022 (approach 2, IsoFLOP profiles): at one compute budget, error against
  log10(params) is a parabola; its vertex is the compute-optimal model size.
- Busbridge et al. 2025 (distillation scaling laws): whether distillation pays depends on whether
  the teacher's compute is counted; see `breakeven_compute`.

Plain floats and numpy arrays in, plain floats and numpy arrays out; nothing about runs or files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, least_squares

NAMES = ("a", "b", "c", "d")
LAW = "E(x) = a * (x + d)**(-b) + c"
_B_STARTS = (0.03, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5)
_B_MAX = 10.0  # exponents beyond this are not a scaling law; the bound keeps ref**b finite
_TOL = 1e-12


def power_law(x, a, b, c, d=0.0):
    """The saturating power law E(x) = a (x + d)^(-b) + c, elementwise over numpy arrays."""
    return a * (np.asarray(x, dtype=float) + d) ** (-b) + c


@dataclass
class PowerLawFit:
    """A fitted E(x) = a (x + d)^(-b) + c, parameters in the original x units.

    `free` names the fitted parameters (the others are fixed: c = 0 without a floor, d = 0
    without an offset). `draws` (n_draws, 4) holds the bootstrap refits as columns a, b, c, d;
    `skipped` counts resamples that had too few distinct x to refit. x_ref is the reference the
    optimiser divided x by (x / x_ref is what it saw).
    """

    a: float
    b: float
    c: float
    d: float
    n_points: int
    rmse: float
    x_ref: float
    free: tuple = ("a", "b", "c")
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    skipped: int = 0

    def predict(self, x):
        """The law at x (scalar or array)."""
        return power_law(x, self.a, self.b, self.c, self.d)

    def ci(self, name: str, level: float = 0.95) -> tuple:
        """Percentile interval (low, high) of parameter `name` over the bootstrap draws."""
        if name not in NAMES:
            raise ValueError(f"unknown parameter {name!r}: choose one of {NAMES}")
        lo, hi = np.percentile(self._draws()[:, NAMES.index(name)], _percentiles(level))
        return float(lo), float(hi)

    def band(self, x, level: float = 0.95) -> tuple:
        """Percentile band (low, high) of the predictions at x over the bootstrap draws."""
        x = np.asarray(x, dtype=float)
        a, b, c, d = (col[:, None] for col in self._draws().T)  # each (n_draws, 1)
        preds = power_law(x.reshape(1, -1), a, b, c, d)  # (n_draws, x.size)
        lo, hi = np.percentile(preds, _percentiles(level), axis=0)
        return lo.reshape(x.shape), hi.reshape(x.shape)

    def to_dict(self) -> dict:
        """JSON-able summary: law, parameters, 95% intervals (None without draws), fit quality."""
        has = len(self.draws) > 0
        return {"law": LAW, "params": {n: float(getattr(self, n)) for n in NAMES},
                "free": list(self.free),
                "ci95": {n: (list(self.ci(n)) if has else None) for n in NAMES},
                "n_points": int(self.n_points), "rmse": float(self.rmse),
                "bootstrap": int(len(self.draws)), "bootstrap_skipped": int(self.skipped),
                "x_ref": float(self.x_ref)}

    def _draws(self) -> np.ndarray:
        if len(self.draws) == 0:
            raise ValueError("this fit has no bootstrap draws: fit it with bootstrap > 0")
        return np.asarray(self.draws, dtype=float)


def _percentiles(level: float) -> list:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    tail = 50.0 * (1 - level)
    return [tail, 100.0 - tail]


def _check_xy(x, y) -> tuple:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (no NaN or inf)")
    if np.any(x <= 0):
        raise ValueError("x must be positive (compute, parameters or data seen)")
    return x, y


def _model(u, y, free):
    """Residual r(q) = a (u + d)^(-b) + c - y and its Jacobian over the free parameters q."""
    idx = [NAMES.index(n) for n in free]

    def full(q):
        p = np.zeros(4)
        p[idx] = q
        return p

    def res(q):
        a, b, c, d = full(q)
        return a * (u + d) ** (-b) + c - y

    def jac(q):
        a, b, c, d = full(q)
        g = (u + d) ** (-b)
        cols = {"a": g, "b": -a * g * np.log(u + d), "c": np.ones_like(u), "d": -a * b * g / (u + d)}
        return np.column_stack([cols[n] for n in free])

    return full, res, jac


def _linear_start(u, y, free, b, d, c_max):
    """Given b and d the law is linear in (a, c): solve that by least squares, clipped to the bounds."""
    g = (u + d) ** (-b)
    if "c" in free:
        a, c = np.linalg.lstsq(np.column_stack([g, np.ones_like(g)]), y, rcond=None)[0]
    else:
        a, c = g @ y / (g @ g), 0.0
    a, c = max(a, 1e-12), min(max(c, 0.0), 0.99 * c_max)
    p = np.array([a, b, c, d])
    return p[[NAMES.index(n) for n in free]]


def _solve(u, y, free, starts, c_max):
    """Least squares from each start within the bounds; returns (best full params, rmse)."""
    full, res, jac = _model(u, y, free)
    bounds = {"a": (0, np.inf), "b": (0, _B_MAX), "c": (0, c_max), "d": (0, np.inf)}
    lb, ub = zip(*(bounds[n] for n in free))
    best = None
    for q0 in starts:
        q0 = np.clip(q0, lb, ub)
        r = least_squares(res, q0, jac=jac, bounds=(lb, ub), method="trf", x_scale="jac",
                          xtol=_TOL, ftol=_TOL, gtol=_TOL, max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    return full(best.x), float(np.sqrt(2 * best.cost / len(y)))


def _grid_starts(u, y, free, c_max, d_starts):
    return [_linear_start(u, y, free, b, d, c_max) for b in _B_STARTS for d in d_starts]


def fit_power_law(x, y, offset: bool = False, floor: bool = True, bootstrap: int = 1000,
                  seed: int = 0) -> PowerLawFit:
    """Fit E(x) = a (x + d)^(-b) + c by bounded least squares, with bootstrap intervals.

    Bounds: a >= 0, 0 <= b <= 10; with `floor`, 0 <= c <= min(y), else c = 0; with `offset`,
    d >= 0, else d = 0. The optimiser sees u = x / x_ref with x_ref = min(x) (FLOPs span 1e12..1e18);
    since a_s (u + d_s)^(-b) = a_s x_ref^b (x + d_s x_ref)^(-b), the reported a = a_s x_ref^b and
    d = d_s x_ref. It starts from a grid of b (a and c solved linearly for each) and keeps the
    lowest residual.

    Bootstrap: `bootstrap` resamples of the (x, y) pairs with replacement (numpy Generator seeded
    by `seed`), each refitted; resamples with fewer distinct x than free parameters are skipped
    and counted in `skipped`. Raises ValueError with fewer points than free parameters + 1.
    """
    x, y = _check_xy(x, y)
    free = ("a", "b") + (("c",) if floor else ()) + (("d",) if offset else ())
    if x.size < len(free) + 1:
        raise ValueError(f"fitting {', '.join(free)} needs at least {len(free) + 1} points, got {x.size}")
    if floor and y.min() <= 0:
        raise ValueError("floor=True bounds the floor by 0 <= c < min(y), so y must be positive; "
                         "pass floor=False to fit without a floor")
    ref, c_max = float(x.min()), (float(y.min()) if floor else np.inf)
    u = x / ref
    # offsets of zero, the smallest x, and the geometric middle of the sampled range
    d_starts = (0.0, 1.0, float(np.sqrt(u.max()))) if offset else (0.0,)
    p, rmse = _solve(u, y, free, _grid_starts(u, y, free, c_max, d_starts), c_max)
    draws, skipped = _bootstrap(u, y, free, p, bootstrap, seed)
    orig = _to_original(np.vstack([p, draws]), ref)  # row 0: the point estimate
    return PowerLawFit(*map(float, orig[0]), n_points=int(x.size), rmse=rmse, x_ref=ref,
                       free=free, draws=orig[1:], skipped=skipped)


def _bootstrap(u, y, free, p, n, seed) -> tuple:
    """Refit `n` resamples; each starts from the full-data fit and the best start of the b grid."""
    rng = np.random.default_rng(seed)
    idx = [NAMES.index(k) for k in free]
    draws, skipped = [], 0
    for _ in range(n):
        pick = rng.integers(0, u.size, u.size)
        if np.unique(u[pick]).size < len(free):
            skipped += 1
            continue
        us, ys = u[pick], y[pick]
        c_max = ys.min() if "c" in free else np.inf
        _, res, _ = _model(us, ys, free)
        grid = _grid_starts(us, ys, free, c_max, (p[3],))
        best_grid = min(grid, key=lambda q: float(res(q) @ res(q)))
        warm = np.clip(p[idx], 0, [c_max if k == "c" else np.inf for k in free])
        draws.append(_solve(us, ys, free, [warm, best_grid], c_max)[0])
    return np.array(draws).reshape(-1, 4), skipped


def _to_original(p: np.ndarray, ref: float) -> np.ndarray:
    """Rows (a_s, b, c, d_s) in units of x / ref -> (a_s ref^b, b, c, d_s ref) in units of x."""
    out = np.array(p, dtype=float, copy=True)
    out[:, 0] = p[:, 0] * ref ** p[:, 1]
    out[:, 3] = p[:, 3] * ref
    return out


def predict_with_interval(fit: PowerLawFit, x, level: float = 0.95) -> tuple:
    """(prediction, low, high) at x: the fitted law and its bootstrap percentile band."""
    low, high = fit.band(x, level)
    return fit.predict(x), low, high


@dataclass
class IsoFlopFit:
    """error = A (log10 N)^2 + B log10 N + C at one compute budget (Hoffmann et al. approach 2).

    `vertex` is log10 of the parabola's minimum (None when A <= 0: no minimum); `clamped` says
    the optimum was moved to the edge of the sampled sizes `n_range`.
    """

    coeffs: tuple  # (A, B, C)
    vertex: float | None
    n_opt: float
    clamped: bool
    n_range: tuple

    def predict(self, params):
        """The parabola's error at model size(s) `params`."""
        return np.polyval(self.coeffs, np.log10(np.asarray(params, dtype=float)))


def isoflop_optimum(params, errors) -> tuple:
    """The compute-optimal size at one budget: returns (n_opt, IsoFlopFit).

    Fits error = A (log10 N)^2 + B log10 N + C over all (N, error) pairs (repeated N for seeds
    are fine; at least 3 distinct sizes). n_opt = 10^(-B / 2A), clamped to [min N, max N]; if the
    parabola has no minimum (A <= 0), n_opt is the sampled edge with the lower fitted error.
    """
    n, e = _check_xy(params, errors)
    if np.unique(n).size < 3:
        raise ValueError(f"an IsoFLOP parabola needs at least 3 distinct sizes, got {np.unique(n).size}")
    coeffs = np.polyfit(np.log10(n), e, 2)
    lo, hi = float(n.min()), float(n.max())
    if coeffs[0] > 0:
        vertex = float(-coeffs[1] / (2 * coeffs[0]))
        n_opt = lo if vertex < np.log10(lo) else hi if vertex > np.log10(hi) else 10.0 ** vertex
        clamped = not np.log10(lo) <= vertex <= np.log10(hi)
    else:
        vertex, clamped = None, True
        n_opt = lo if np.polyval(coeffs, np.log10(lo)) <= np.polyval(coeffs, np.log10(hi)) else hi
    fit = IsoFlopFit(tuple(map(float, coeffs)), vertex, float(n_opt), bool(clamped), (lo, hi))
    return fit.n_opt, fit


def best_per_budget(rows) -> list:
    """For each (method, budget), the measured size with the lowest mean error over seeds.

    rows: dicts with keys budget, params, error, method (one per run). Returns dicts
    {method, budget, params, error (the mean), n_seeds, n_sizes} sorted by method then budget;
    equal means go to the smaller model.
    """
    groups = {}
    for r in rows:
        key = (r["method"], r["budget"])
        groups.setdefault(key, {}).setdefault(r["params"], []).append(float(r["error"]))
    out = []
    for (method, budget), by_size in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        means = {size: float(np.mean(errs)) for size, errs in by_size.items()}
        best = min(means, key=lambda size: (means[size], size))
        out.append({"method": method, "budget": budget, "params": best, "error": means[best],
                    "n_seeds": len(by_size[best]), "n_sizes": len(by_size)})
    return out


def _crossings(f, grid) -> list:
    """Roots of f on a sorted grid: brentq in each interval where f changes sign."""
    vals = np.array([f(g) for g in grid])
    roots = [float(g) for g, v in zip(grid, vals) if v == 0]
    for i in np.flatnonzero(vals[:-1] * vals[1:] < 0):
        roots.append(float(brentq(f, grid[i], grid[i + 1], xtol=1e-15 * grid[i], rtol=1e-15)))
    return sorted(roots)


def _better(plain_err: float, distilled_err: float) -> str:
    if np.isclose(plain_err, distilled_err, rtol=1e-12, atol=0):
        return "tie"
    return "distilled" if distilled_err < plain_err else "plain"


def breakeven_compute(plain: PowerLawFit, distilled: PowerLawFit, teacher_flops: float,
                      lo: float, hi: float, n_grid: int = 256) -> dict:
    """The compute in [lo, hi] where distillation's error law meets plain training's.

    Both laws give test error against the student's training compute. Two conventions:
    - "excluded" (teacher sunk or shared by many students): solve plain(C) = distilled(C), C the
      student's compute.
    - "included" (the teacher is trained for this student): C is total compute, the student gets
      C - T with T = teacher_flops; solve plain(C) = distilled(C - T) for C > T (solved in
      s = C - T on its own log grid, so crossings just above T are found too).
    Each case: sign changes of plain - distilled on a log grid of `n_grid` points, then brentq.
    A crossing that only touches without changing sign is missed. Returns a dict with
    "excluded" / "included" (the lowest crossing, None when there is none in range), all
    "excluded_crossings" / "included_crossings", and "better_at_lo" / "better_at_hi"
    ({"excluded": m, "included": m}, m in "plain", "distilled", "tie"; at C <= T distillation
    cannot run at all, which counts as "plain").
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    if teacher_flops < 0:
        raise ValueError(f"teacher_flops must be >= 0, got {teacher_flops}")
    t = float(teacher_flops)
    excl = _crossings(lambda c: float(plain.predict(c) - distilled.predict(c)), np.geomspace(lo, hi, n_grid))
    incl = []
    if hi > t:
        s_lo = lo - t if lo > t else (hi - t) * 1e-9  # the search starts just above the teacher's cost
        s = _crossings(lambda s: float(plain.predict(t + s) - distilled.predict(s)),
                       np.geomspace(s_lo, hi - t, n_grid))
        incl = [t + v for v in s]

    def included_better(c):
        return "plain" if c <= t else _better(float(plain.predict(c)), float(distilled.predict(c - t)))

    return {"excluded": excl[0] if excl else None, "included": incl[0] if incl else None,
            "excluded_crossings": excl, "included_crossings": incl,
            "better_at_lo": {"excluded": _better(float(plain.predict(lo)), float(distilled.predict(lo))),
                             "included": included_better(lo)},
            "better_at_hi": {"excluded": _better(float(plain.predict(hi)), float(distilled.predict(hi))),
                             "included": included_better(hi)},
            "teacher_flops": t, "range": [float(lo), float(hi)]}
