"""What the fitted laws say, and only inside the data: held-out predictions beside naive baselines,
every crossing of two methods' compute laws with its interval (teacher free, amortised, full), and
distillation's measured gain per cell, paired by seed against the same student and budget.

A method's compute law is its compute-efficient frontier: at student compute C, the lowest error
its law gives over the model sizes N between its smallest and largest fitted size whose images
D = C / k(N) lie between its fewest and most fitted images (k(N), FLOPs per image, interpolated in
log-log between the measured sizes). Nothing is evaluated outside the measured range except the
declared held-out rows.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
from scipy.optimize import brentq

from distill.report.fit_runs import LEVEL, MethodFit, cell_means, fit_method, one_blas_thread, parameters
from distill.report.laws import FORMS
from distill.report.stats import paired_diff_ci

_N_GRID = 96  # model sizes the frontier minimises over
_C_GRID = 400  # computes searched for a change of sign before brentq
TEACHER_COSTS = ("free", "amortised", "full")
GOAL_POINTS = 1.0  # the ladder's test (issue 32): the law's mean absolute error over the held-out cells at most this


def _percentiles(values) -> tuple:
    lo, hi = np.percentile(values, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(lo), float(hi)


def frontier(fit: MethodFit, theta, flops) -> np.ndarray:
    """The law's lowest error at each student compute in `flops` over the fitted sizes and images."""
    sizes = sorted({float(r["params"]) for r in fit.rows})
    log_k = np.log([np.mean([r["flops"] / r["images"] for r in fit.rows if r["params"] == s]) for s in sizes])
    c = np.atleast_1d(np.asarray(flops, float))[:, None]  # (C, 1)
    d_lo, d_hi = fit.range("images")
    n = np.broadcast_to(np.geomspace(sizes[0], sizes[-1], _N_GRID), (len(c), _N_GRID))
    if np.all(np.diff(log_k) > 0):  # where the images bound it, the size at which a bound is met exactly,
        # so the frontier is continuous in C: a grid alone makes it step, and two such laws cross at each step
        edge = [np.exp(np.interp(np.log(c / d), log_k, np.log(sizes), left=np.nan, right=np.nan))
                for d in (d_lo, d_hi)]
        n = np.concatenate([n, *edge], axis=1)
    k = np.exp(np.interp(np.log(n), np.log(sizes), log_k))  # FLOPs per image at each N
    d = c / k  # (C, N) images
    inside = np.isfinite(n) & (d >= d_lo * (1 - 1e-9)) & (d <= d_hi * (1 + 1e-9))
    n, d = np.where(inside, n, sizes[0]), np.where(inside, d, d_lo)  # evaluated, then masked
    err = fit.error(theta, n, d, np.broadcast_to(c, d.shape))
    return np.where(inside, err, np.inf).min(axis=1)


def _roots(diff, lo: float, hi: float) -> List[float]:
    grid = np.geomspace(lo, hi, _C_GRID)
    vals = diff(grid)
    roots = [float(g) for g, v in zip(grid, vals) if v == 0]
    for i in np.flatnonzero(vals[:-1] * vals[1:] < 0):
        roots.append(float(brentq(lambda c: float(diff(np.array([c]))[0]), grid[i], grid[i + 1], rtol=1e-10)))
    return sorted(roots)


def _pair_roots(a: MethodFit, b: MethodFit, theta_a, theta_b, shares, lo, hi) -> List[float]:
    """Total computes in [lo, hi] where a's law at C - share_a meets b's at C - share_b."""
    return _roots(lambda c: frontier(a, theta_a, c - shares[0]) - frontier(b, theta_b, c - shares[1]), lo, hi)


def teacher_share(fit: MethodFit, cost: str, students: int) -> float:
    """The teacher FLOPs charged to each run of the method: none, its training over `students`
    students, or all of it."""
    t = float(fit.rows[0].get("teacher_flops") or 0.0)
    return {"free": 0.0, "amortised": t / students, "full": t}[cost]


def compare(a: MethodFit, b: MethodFit, cost: str, students: Dict[str, int]) -> dict:
    """Every crossing of a's and b's compute laws (total compute, the teacher charged as `cost`)
    inside the computes where both were measured, each with its bootstrap interval, and which
    method is lower between them."""
    shares = (teacher_share(a, cost, students[a.method]), teacher_share(b, cost, students[b.method]))
    lo = max(a.range("flops")[0] + shares[0], b.range("flops")[0] + shares[1])
    hi = min(a.range("flops")[1] + shares[0], b.range("flops")[1] + shares[1])
    out = {"methods": [a.method, b.method], "teacher_cost": cost, "teacher_flops_charged": list(shares),
           "range": [lo, hi] if lo < hi else None, "crossings": [], "segments": []}
    if lo >= hi:
        return out
    roots = _pair_roots(a, b, a.solution.theta, b.solution.theta, shares, lo, hi)
    n = min(len(a.draws), len(b.draws))
    drawn = [_pair_roots(a, b, a.draws[i], b.draws[i], shares, lo, hi) for i in range(n)]
    edges = [lo, *[math.sqrt(x * y) for x, y in zip(roots, roots[1:])], hi]
    for j, root in enumerate(roots):
        inside = [[r for r in rs if edges[j] <= r <= edges[j + 1]] for rs in drawn]
        near = [min(rs, key=lambda r: abs(math.log(r / root))) for rs in inside if rs]  # each draw's nearest
        low, high = _percentiles(near) if near else (None, None)
        out["crossings"].append({"methods": [a.method, b.method], "teacher_cost": cost, "flops": root,
                                 "low": low, "high": high, "draws_with_crossing": len(near) / max(n, 1)})
    cuts = [lo, *roots, hi]
    for x, y in zip(cuts, cuts[1:]):
        mid = math.sqrt(x * y)
        ea = float(frontier(a, a.solution.theta, np.array([mid - shares[0]]))[0])
        eb = float(frontier(b, b.solution.theta, np.array([mid - shares[1]]))[0])
        out["segments"].append({"from": x, "to": y, "lower_error": a.method if ea < eb else b.method})
    return out


def predictions(fits: Dict[str, MethodFit], held: List[dict], seed: int) -> tuple:
    """Each held-out cell (method, params, images): the law's top-1 with a 95% prediction interval
    for the mean of its seeds (refits plus resampled seed noise), beside persistence (the largest
    fitted size at that budget: the same images, or the same `budget` where the rows carry one) and a
    line in log N at that budget. Also, per cell, the drawn means the interval is read from (refit i
    of a method is draw i of each of its cells, so a law's cells move together), for `power`."""
    rng = np.random.default_rng(seed)
    groups: Dict[tuple, list] = {}
    for r in held:
        groups.setdefault((r["method"], r["params"], r["images"]), []).append(r)
    out, drawn_means = [], []
    for (method, params, images), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        fit = fits.get(method)
        if fit is None:
            continue
        flops = float(np.mean([r["flops"] for r in runs]))
        budget = runs[0].get("budget")  # a study's budget in FLOPs: the naive baselines match it, not images
        measured = [float(r["top1"]) for r in runs if r.get("top1") is not None]
        m = len(runs)  # the cell's runs, measured or planned: the interval is for their mean
        point = float(fit.error(fit.solution.theta, [params], [images], [flops])[0])
        drawn = np.array([fit.error(t, [params], [images], [flops])[0] for t in fit.draws])
        noise = rng.choice(fit.residuals, size=(len(drawn), m)).mean(axis=1)  # seed noise of a mean of m runs
        drawn_means.append(100 * (1 - drawn * np.exp(noise)))
        low, high = _percentiles(drawn_means[-1])
        out.append({"method": method, "params": params, "images": images, "flops": flops,
                    "predicted_top1": 100 * (1 - point), "low": low, "high": high,
                    "persistence_top1": _persistence(fit, images, budget),
                    "loglinear_top1": _loglinear(fit, params, images, budget),
                    "measured_top1": float(np.mean(measured)) if measured else None, "seeds": len(measured)})
    return out, drawn_means


def power(preds: List[dict], drawn_means: List[np.ndarray], goal: float = GOAL_POINTS) -> Dict[str, dict]:
    """How likely the held-out test could pass were each law right in form: over the same draws as the
    prediction intervals (a refit's prediction plus the seed noise of a mean of the planned seeds, less
    the fit's own prediction: the error a correct law makes through its fitted table's noise and the
    held-out cells' own), the law's mean absolute error over the cells, per method and over all; its
    mean (`expected_mae`) and the share of draws at most `goal` (`p_within_goal`). Decided before the
    held-out runs, this says whether a test can tell a good law from a bad one at all. Once every cell is
    measured, `p_as_large`: the share of draws whose error is at least the law's measured one (small: a
    miss larger than a right law makes). The intervals run narrow (docs/fit.md), so read the chances as
    upper ends. Empty without held-out cells."""
    out: Dict[str, dict] = {}
    if not preds:
        return out
    draws = min(len(d) for d in drawn_means)
    errors = np.stack([np.abs(d[:draws] - p["predicted_top1"]) for p, d in zip(preds, drawn_means)], axis=1)
    for key in sorted({p["method"] for p in preds}) + ["all"]:
        cols = [i for i, p in enumerate(preds) if key in ("all", p["method"])]
        mae = errors[:, cols].mean(axis=1)
        out[key] = {"cells": len(cols), "goal": goal, "expected_mae": float(mae.mean()),
                    "p_within_goal": float(np.mean(mae <= goal))}
        measured = [preds[i]["measured_top1"] for i in cols]
        if None not in measured:
            missed = np.mean([abs(preds[i]["predicted_top1"] - m) for i, m in zip(cols, measured)])
            out[key]["p_as_large"] = float(np.mean(mae >= missed))
    return out


def _cells_at(fit: MethodFit, images, budget=None) -> List[tuple]:
    """(params, mean top-1) of the fitted cells at `budget` (training FLOPs asked: each size trains its own
    images) where fitted rows carry it, else at `images`."""
    at: Dict[float, list] = {}
    for r in (r for r in fit.rows if budget is not None and r.get("budget") == budget):
        at.setdefault(r["params"], []).append(r["top1"])
    if not at:  # no fitted size was asked that budget (or none is given): the same images
        return [(n, c["top1"]) for (n, d), c in cell_means(fit.rows).items() if d == images]
    return [(n, float(np.mean(v))) for n, v in at.items()]


def _persistence(fit: MethodFit, images, budget=None) -> Optional[float]:
    at = _cells_at(fit, images, budget)
    return max(at)[1] if at else None


def _loglinear(fit: MethodFit, params, images, budget=None) -> Optional[float]:
    at = _cells_at(fit, images, budget)
    if len(at) < 2:
        return None
    slope, icept = np.polyfit(np.log([n for n, _ in at]), [t for _, t in at], 1)
    return float(icept + slope * np.log(params))


def holdout_errors(preds: List[dict], held: List[dict], seed: int, draws: int = 2000) -> Dict[str, dict]:
    """Mean absolute error (top-1 points) of the law, persistence and the log-linear line over the
    measured held-out cells, per method and over all. Beside each baseline, the law's error minus its
    (negative: the law is closer) with a 95% interval from resampling each cell's seeds, the unit that
    varies: the law beats a baseline on these cells only where the interval is below zero. None where a
    cell has fewer than two seeds (no spread to resample)."""
    rng = np.random.default_rng(seed)
    out = {}
    measured = [p for p in preds if p["measured_top1"] is not None]
    for key in sorted({p["method"] for p in measured}) + ["all"]:
        mine = [p for p in measured if key in ("all", p["method"])]
        out[key] = {"cells": len(mine), **{name: _mae(mine, f"{name}_top1") for name in
                                           ("predicted", "persistence", "loglinear")}}
        seeds = [[float(r["top1"]) for r in held if r.get("top1") is not None and
                  (r["method"], r["params"], r["images"]) == (p["method"], p["params"], p["images"])] for p in mine]
        for name in ("persistence", "loglinear"):
            cells = [(p, s) for p, s in zip(mine, seeds) if p[f"{name}_top1"] is not None]
            if not cells or any(len(s) < 2 for _, s in cells):
                out[key][f"law_minus_{name}"] = None
                continue
            law, base = (np.array([p[k] for p, _ in cells]) for k in ("predicted_top1", f"{name}_top1"))
            means = np.stack([rng.choice(s, size=(draws, len(s))).mean(axis=1) for _, s in cells], axis=1)
            diff = np.abs(law - means).mean(axis=1) - np.abs(base - means).mean(axis=1)
            low, high = _percentiles(diff)
            value = _mae([p for p, _ in cells], "predicted_top1") - _mae([p for p, _ in cells], f"{name}_top1")
            out[key][f"law_minus_{name}"] = {"value": value, "low": low, "high": high}
    return out


def _mae(preds, key) -> Optional[float]:
    errs = [abs(p[key] - p["measured_top1"]) for p in preds if p[key] is not None]
    return float(np.mean(errs)) if errs else None


def gains(rows: List[dict], baselines: Dict[str, str]) -> List[dict]:
    """Each method's gain in top-1 points over its baseline in the same cell (same params and
    images), paired by seed, with the 95% t half-width (None with fewer than two pairs)."""
    top1: Dict[tuple, Dict[int, float]] = {}
    for r in (r for r in rows if r.get("top1") is not None):  # planned runs (a study's prediction) have none
        top1.setdefault((r["method"], r["params"], r["images"]), {})[r["seed"]] = float(r["top1"])
    out = []
    for (method, params, images), mine in sorted(top1.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        base = baselines.get(method)
        theirs = top1.get((base, params, images), {})
        seeds = sorted(set(mine) & set(theirs))
        if base is None or base == method or not seeds:
            continue
        gain, half = paired_diff_ci([mine[s] for s in seeds], [theirs[s] for s in seeds])
        size = next((r.get("size") for r in rows if (r["method"], r["params"]) == (method, params)), None)
        out.append({"method": method, "baseline": base, "params": params, "images": images, "size": size,
                    "gain": gain, "half_width": half if math.isfinite(half) else None, "seeds": seeds})
    return out


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None  # JSON has no inf


def baselines(rows: List[dict]) -> Dict[str, str]:
    """Each method's baseline: its rows' `baseline`, else `plain` where the table has it, else the
    table's first method; the baseline itself has none."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    default = "plain" if "plain" in methods else methods[0]
    out = {}
    for m in methods:
        named = next((r["baseline"] for r in rows if r["method"] == m and r.get("baseline")), None)
        if named or m != default:
            out[m] = named or default
    return out


def students_of(rows: List[dict], method: str) -> int:
    """The students a method's teacher taught: its distinct (params, images) cells; seed replicates
    of one cell are one student trained again, not another student to amortise over."""
    return len({(r["params"], r["images"]) for r in rows if r["method"] == method})


def _law(fit: MethodFit) -> dict:
    sol = fit.solution
    return {"form": fit.form.name, "declared": len(fit.cv) == 1, "expression": fit.form.expression,
            "cv_error": _finite(fit.cv[fit.form.name]),
            "candidates": {k: _finite(v) for k, v in fit.cv.items()},
            "parameters": parameters(fit), "reference": fit.refs,
            "fit": {"converged": sol.converged, "starts": sol.starts, "starts_converged": sol.starts_converged,
                    "starts_at_best": sol.starts_at_best, "huber_loss": sol.loss},
            "bootstrap": {"unit": "residuals", "draws": len(fit.draws), "converged": fit.draws_converged},
            "runs": len(fit.rows), "sizes": sorted({r["params"] for r in fit.rows}),
            "range": {k: list(fit.range(k)) for k in ("params", "images", "flops")}}


def epochs_of(row: dict) -> float:
    """Images seen over unique images: how many times a run saw its training set."""
    return float(row["images"]) / float(row["unique_images"])


def analyse(rows: List[dict], bootstrap: int = 400, students: Optional[int] = None, seed: int = 0,
            max_epochs: Optional[float] = None, forms: Optional[Dict[str, str]] = None) -> tuple:
    """Fit every method on its non-held-out rows and draw the claims. Returns (result, fits):
    result is what fits.json holds, fits the `MethodFit` per fitted method (for the plots).
    `max_epochs`: fit only the runs that saw their unique images at most this many times (the laws
    take D as images seen, which repetition breaks: Muennighoff et al. 2023 find up to about 4 epochs
    worth nearly as much as fresh data); the other runs stay in the table, gains and baselines.
    `forms`: a method's law declared by name (its form is then not chosen by leaving sizes out)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fits, laws = {}, {}
    with one_blas_thread():
        for m in methods:
            mine = [r for r in rows if r["method"] == m and not r.get("holdout")]
            beyond = [r for r in mine if max_epochs is not None and epochs_of(r) > max_epochs * (1 + 1e-9)]
            mine = [r for r in mine if r not in beyond]
            declared = (forms or {}).get(m)
            try:
                fits[m] = fit_method(m, mine, bootstrap, seed, (declared,) if declared else tuple(FORMS))
                laws[m] = _law(fits[m])
            except ValueError as e:
                laws[m] = {"form": None, "not_fitted": str(e)}
            if max_epochs is not None:
                laws[m]["beyond_max_epochs"] = len(beyond)
        base = baselines(rows)
        counts = {m: students or students_of(rows, m) for m in methods}
        comparisons = [compare(fits[base[m]], fits[m], cost, counts) for m in methods
                       if m in fits and base.get(m) in fits for cost in TEACHER_COSTS]
        held = [r for r in rows if r.get("holdout")]
        preds, drawn_means = predictions(fits, held, seed)
    return {"laws": laws, "predictions": preds, "holdout_errors": holdout_errors(preds, held, seed),
            "holdout_power": power(preds, drawn_means),
            "crossings": [c for comp in comparisons for c in comp["crossings"]], "comparisons": comparisons,
            "students": counts, "gains": gains(rows, base)}, fits
