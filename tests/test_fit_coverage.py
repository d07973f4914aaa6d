"""The fit's 95% intervals cover the truth at about the nominal rate, on synthetic runs drawn from a
known law (Hoffmann et al.'s form) with seed noise: two seeds a cell, three fitted sizes, a larger
held-out size, as the committed CPU ladder has."""
import math

import numpy as np
import pytest

from distill.report.fit_claims import power, predictions
from distill.report.fit_runs import fit_method, one_blas_thread

REPLICAS, DRAWS, NOISE = 40, 50, 0.03  # NOISE: the seed noise's standard deviation in log error
SIZES, HELD, IMAGES = (1e5, 3e5, 1e6), 2e6, (2e4, 4e4, 8e4)
GOAL = 1.0  # top-1 points: the held-out test's bar


def truth(n, d):
    return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6


def _runs(rng, sizes, holdout):
    return [{"method": "plain", "params": n, "images": d, "flops": 100.0 * n * d, "seed": s, "holdout": holdout,
             "top1": 100 * (1 - truth(n, d) * math.exp(NOISE * rng.standard_normal()))}
            for n in sizes for d in IMAGES for s in (0, 1)]


@pytest.mark.slow  # 40 replicas of 50 refits: the full tier
def test_95_percent_intervals_cover_the_truth_at_about_the_nominal_rate():
    """Per replica: the refits' 95% band for the law at an interior cell (parameter uncertainty)
    against the true error, and the 95% prediction interval for the held-out cells' two-seed mean
    (seed noise added) against fresh runs. 40 replicas: the observed rate of a 95% interval has a
    binomial standard deviation of sqrt(0.95 * 0.05 / 40) = 0.034, so it must lie above 0.95 - 3 x
    0.034 = 0.85; the intervals must also be narrow enough to say something (median width). The power
    each replica's prediction states for its held-out cells (fit_claims.power) is checked the same way: the
    share of replicas whose law met the goal."""
    band_hits, pi_hits, widths, chance, passed = [], [], [], [], []
    with one_blas_thread():
        for r in range(REPLICAS):
            rng = np.random.default_rng(1000 + r)
            fit = fit_method("plain", _runs(rng, SIZES, False), DRAWS, seed=r, forms=("chinchilla",),
                             best_of=8, refit_starts=1)
            at = [fit.error(t, [3e5], [4e4], [100 * 3e5 * 4e4])[0] for t in fit.draws]
            lo, hi = np.percentile(at, [2.5, 97.5])
            band_hits.append(lo <= truth(3e5, 4e4) <= hi)
            preds, drawn = predictions({"plain": fit}, _runs(rng, (HELD,), True), seed=r)
            for p in preds:
                pi_hits.append(p["low"] <= p["measured_top1"] <= p["high"])
                widths.append(p["high"] - p["low"])
            chance.append(power(preds, drawn, GOAL)["all"]["p_within_goal"])
            passed.append(np.mean([abs(p["predicted_top1"] - p["measured_top1"]) for p in preds]) <= GOAL)
    band, pi = float(np.mean(band_hits)), float(np.mean(pi_hits))
    print(f"\ncoverage over {REPLICAS} replicas, {DRAWS} refits each: nominal 0.95; law at an interior cell "
          f"{band:.3f}; held-out prediction intervals {pi:.3f} ({len(pi_hits)} cells); median PI width "
          f"{np.median(widths):.2f} points; power at {GOAL} point: said {np.mean(chance):.3f}, "
          f"passed {np.mean(passed):.3f}")
    assert band >= 0.85 and pi >= 0.85, (band, pi)
    assert np.median(widths) < 10.0  # an interval of everything would cover too
    # the power the prediction states (the chance a right law's error is within GOAL) against how often it was:
    # within 3 binomial standard deviations of REPLICAS trials, at a goal where the chance is neither 0 nor 1
    said = float(np.mean(chance))
    assert 0.1 < said < 0.9 and abs(said - np.mean(passed)) <= 3 * math.sqrt(said * (1 - said) / REPLICAS)
