"""Scaling-law fits against data and answers made by hand: power laws (with and without offset and
noise), IsoFLOP vertices, the best size per budget, breakeven compute, and the figures."""
import json

import numpy as np
import pytest

from distill.report import scaling_plots
from distill.report.fits import (PowerLawFit, best_per_budget, breakeven_compute, fit_power_law,
                                 isoflop_optimum, predict_with_interval)

X = np.logspace(12, 16, 6)  # FLOPs


def test_power_law_recovered_from_noiseless_data():
    y = 2.5e3 * X ** -0.3 + 0.08
    fit = fit_power_law(X, y, bootstrap=0)
    assert abs(fit.b - 0.3) < 1e-3 and abs(fit.c - 0.08) < 1e-3
    assert abs(fit.a / 2.5e3 - 1) < 1e-3  # reported in FLOPs, not in units of x / x_ref
    x_new = np.array([3e12, 7e15, 1e17])
    np.testing.assert_allclose(fit.predict(x_new), 2.5e3 * x_new ** -0.3 + 0.08, rtol=1e-6)
    assert fit.rmse < 1e-9 and fit.n_points == 6 and fit.d == 0.0


def test_noisy_fit_interval_and_band_contain_the_truth():
    truth = lambda x: 2.5e3 * x ** -0.3 + 0.08  # noqa: E731
    rng = np.random.default_rng(3)
    x = np.logspace(12, 16, 8)
    y = truth(x) * (1 + 0.02 * rng.standard_normal(x.size))
    fit = fit_power_law(x, y, bootstrap=300, seed=0)
    lo, hi = fit.ci("b")
    assert lo < 0.3 < hi and hi - lo < 0.2  # contains b, and is not vacuous
    x_held = 3e14  # between sampled points
    pred, low, high = predict_with_interval(fit, x_held)
    assert low < truth(x_held) < high and low < pred < high
    assert len(fit.draws) + fit.skipped == 300
    again = fit_power_law(x, y, bootstrap=300, seed=0)
    assert np.array_equal(fit.draws, again.draws)  # seeded: the same draws
    summary = json.loads(json.dumps(fit.to_dict()))
    assert summary["bootstrap"] == len(fit.draws) and summary["ci95"]["b"] == pytest.approx([lo, hi])


def test_offset_recovered():
    d = 3e13
    y = 2.5e3 * (X + d) ** -0.3 + 0.08
    fit = fit_power_law(X, y, offset=True, bootstrap=0)
    assert abs(fit.d / d - 1) < 1e-3 and abs(fit.b - 0.3) < 1e-3
    plain = fit_power_law(X, y, offset=False, bootstrap=0)
    assert plain.rmse > 1e3 * max(fit.rmse, 1e-12)  # without d the law cannot bend at small x


def test_no_floor_fixes_c_to_zero():
    y = 40.0 * X ** -0.1
    fit = fit_power_law(X, y, floor=False, bootstrap=0)
    assert fit.c == 0.0 and abs(fit.b - 0.1) < 1e-6 and fit.free == ("a", "b")


def test_too_few_points_refused():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law(X[:3], 1.0 / X[:3] + 0.1)
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_power_law(X[:4], 1.0 / X[:4] + 0.1, offset=True)
    with pytest.raises(ValueError, match="no bootstrap draws"):
        fit_power_law(X, 1e3 * X ** -0.3 + 0.1, bootstrap=0).ci("b")


def test_isoflop_vertex_and_clamping():
    n = np.logspace(6.5, 8.5, 5)
    err = 0.3 * (np.log10(n) - 7.5) ** 2 + 0.2
    n_opt, fit = isoflop_optimum(np.repeat(n, 2), np.repeat(err, 2))  # two seeds per size
    assert n_opt == pytest.approx(10 ** 7.5, rel=1e-9) and not fit.clamped
    assert fit.predict(10 ** 7.5) == pytest.approx(0.2)
    n_opt, fit = isoflop_optimum(n, 0.3 * (np.log10(n) - 9.0) ** 2 + 0.2)  # vertex above the range
    assert n_opt == n.max() and fit.clamped and fit.vertex == pytest.approx(9.0)
    n_opt, fit = isoflop_optimum(n, -((np.log10(n) - 7.0) ** 2))  # concave: no minimum
    assert fit.clamped and fit.vertex is None and n_opt == n.max()  # log10 8.5 is further from 7
    with pytest.raises(ValueError, match="3 distinct sizes"):
        isoflop_optimum([1e6, 1e6, 1e7], [0.3, 0.31, 0.2])


def test_best_per_budget_takes_the_lowest_mean_over_seeds():
    rows = [dict(method="plain", budget=1e15, params=5e6, error=e) for e in (0.30, 0.20)]  # mean 0.25
    rows += [dict(method="plain", budget=1e15, params=2e7, error=e) for e in (0.21, 0.27)]  # mean 0.24
    rows += [dict(method="hard", budget=1e15, params=5e6, error=0.22)]
    best = best_per_budget(rows)
    assert [(b["method"], b["params"]) for b in best] == [("hard", 5e6), ("plain", 2e7)]
    assert best[1]["error"] == pytest.approx(0.24) and best[1]["n_seeds"] == 2 and best[1]["n_sizes"] == 2


def _law(a, b, c):
    return PowerLawFit(a=a, b=b, c=c, d=0.0, n_points=0, rmse=0.0, x_ref=1.0)


def test_breakeven_matches_the_hand_solution():
    # plain: 2e15/C + 0.10; distilled: 1e15/C + 0.12 (lower at small C, higher floor)
    a1, a2, c1, c2, t = 2e15, 1e15, 0.10, 0.12, 1e15
    res = breakeven_compute(_law(a1, 1.0, c1), _law(a2, 1.0, c2), t, 1e14, 1e18)
    assert res["excluded"] == pytest.approx((a1 - a2) / (c2 - c1), rel=1e-6)  # 5e16
    assert res["better_at_lo"] == {"excluded": "distilled", "included": "plain"}  # 1e14 < T
    assert res["better_at_hi"] == {"excluded": "plain", "included": "plain"}
    # a1/C + c1 = a2/(C - T) + c2  <=>  dc C^2 - (a1 - a2 + dc T) C + a1 T = 0, dc = c2 - c1
    dc = c2 - c1
    q = a1 - a2 + dc * t
    roots = sorted((q + s * np.sqrt(q * q - 4 * dc * a1 * t)) / (2 * dc) for s in (-1, 1))
    assert res["included_crossings"] == pytest.approx(roots, rel=1e-6)  # pays only between the roots
    assert res["included"] == pytest.approx(roots[0], rel=1e-6) and roots[1] < res["excluded"]


def test_breakeven_none_without_a_crossing():
    plain, distilled = _law(2e15, 1.0, 0.10), _law(1e15, 1.0, 0.05)  # distilled better everywhere
    res = breakeven_compute(plain, distilled, 0.0, 1e14, 1e18)
    assert res["excluded"] is None and res["included"] is None
    assert res["better_at_lo"]["excluded"] == res["better_at_hi"]["excluded"] == "distilled"
    res = breakeven_compute(plain, distilled, 1e19, 1e14, 1e18)  # the teacher alone exceeds hi
    assert res["included"] is None and res["better_at_hi"]["included"] == "plain"


def _png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_every_plot_writes_a_png(tmp_path):
    y = 2.5e3 * X ** -0.3 + 0.08
    fit = fit_power_law(X, y, bootstrap=20)
    series = [dict(label=f"{n:.0e} {m}", method=m, params=n, compute=list(X[:3] * k),
                   error=list(y[:3] * (1.02 if m == "plain" else 0.99)), error_std=[0.005] * 3)
              for n, k in ((5e6, 1.0), (2e7, 10.0)) for m in ("plain", "hard")]
    rows = [dict(budget=b, params=n, gain=g, gain_ci=0.4) for b in (1e15, 1e16)
            for n, g in ((5e6, 1.2), (2e7, 0.5))]
    points = [dict(label="s", predicted=0.2, low=0.18, high=0.23, measured=0.21)]
    paths = [scaling_plots.error_vs_compute(series, {"plain": fit, "hard": fit}, tmp_path),
             scaling_plots.gain_vs_size(rows, tmp_path),
             scaling_plots.predicted_vs_measured(points, tmp_path),
             scaling_plots.fit_curve(X, y, fit, tmp_path / "sub", "params", "error", "law.png")]
    assert len(set(paths)) == 4 and all(_png(p) for p in paths)
