"""docs/scaling_power/: the power of each committed held-out test (scripts/scaling_power.py), tied to the studies'
committed fits, and its README's table and claims recomputed from its power.json."""
import importlib.util
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from conftest import ROOT

FOLDER = ROOT / "docs/scaling_power"
TABLE = json.loads((FOLDER / "power.json").read_text())
README = (FOLDER / "README.md").read_text()
_spec = importlib.util.spec_from_file_location("scaling_power", ROOT / "scripts/scaling_power.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

REFITS = [r for r in TABLE["studies"] if r["keep_seeds"] is None]
FOUR_X = [r for r in REFITS if r["ratio"] >= 4 and r["study"] != "scaling_cpu_v6_fp32"]  # fp32 re-measures v6's cells


def test_each_refit_predicts_what_its_study_committed():
    """The refits are the committed fits: the same cells, each prediction and interval end within 0.03 points
    (0.2 for the first study, fitted by the code of its day), and the same held-out errors."""
    assert [r["study"] for r in REFITS] == list(script.STUDIES)
    for r in REFITS:
        _, fits = script.committed(r["study"])
        moved = max(abs(p[k] - c[k]) for p, c in zip(r["predictions"], fits["predictions"])
                    for k in ("predicted_top1", "low", "high"))
        assert [(p["method"], p["params"], p["images"]) for p in r["predictions"]] == \
            [(p["method"], p["params"], p["images"]) for p in fits["predictions"]]
        assert moved == pytest.approx(r["moved_from_committed"])
        assert moved <= (0.2 if r["study"] == "scaling_cpu" else 0.03)
        assert r["errors"]["predicted"] == pytest.approx(fits["holdout_errors"]["all"]["predicted"], abs=0.03)
        assert r["inside"] == sum(p["low"] <= p["measured_top1"] <= p["high"] for p in fits["predictions"])


def _row(r) -> str:
    e, p = r["errors"], r["power"]
    name = r["study"] + ("" if r["keep_seeds"] is None else f" on seeds {', '.join(map(str, r['keep_seeds']))}")
    return (f"| {name} | {r['ratio']:.2f} | {r['cells']} | {r['inside']} | {e['predicted']:.2f} | "
            f"{e['persistence']:.2f} | {e['loglinear']:.2f} | {p['expected_mae']:.2f} | {p['p_within_goal']:.2f} | "
            f"{p['p_as_large']:.2f} |")


def test_the_readme_table_is_power_json():
    missing = [_row(r) for r in TABLE["studies"] if _row(r) not in README]
    assert not missing, missing


def test_the_readmes_claims_follow_from_power_json():
    """The 4x tests' chances, how many of them a right law would pass, the cells inside their intervals, and
    the seeds v7's intervals ask for, as the README states them."""
    chances = [r["power"]["p_within_goal"] for r in FOUR_X]
    assert [r["study"] for r in FOUR_X] == [f"scaling_cpu_v{k}" for k in (2, 3, 4, 5, 6, 7)]
    errors = [r["power"]["expected_mae"] for r in FOUR_X]
    stated = [f"{min(chances):.2f} to {max(chances):.2f}", f"{sum(chances):.1f} of the 6",
              f"{math.prod(1 - c for c in chances):.2f}",
              f"{sum(r['inside'] for r in FOUR_X)} of {sum(r['cells'] for r in FOUR_X)} cells",
              f"{min(errors):.2f} to {max(errors):.2f}"]
    late = [r for r in FOUR_X if r["study"] in ("scaling_cpu_v5", "scaling_cpu_v6", "scaling_cpu_v7")]
    stated += [f"fails all three with chance {math.prod(1 - r['power']['p_within_goal'] for r in late):.2f}",
               f"{sum(r['inside'] for r in FOUR_X[:3])} of their {sum(r['cells'] for r in FOUR_X[:3])} cells"]
    seeds = TABLE["seeds"]
    full, fewer = next(r for r in REFITS if r["study"] == "scaling_cpu_v7"), TABLE["studies"][-1]
    assert fewer["keep_seeds"] == [0, 1]
    exponent = math.log(np.mean(fewer["widths"]) / np.mean(full["widths"])) / math.log(3 / 2)
    assert seeds["exponent"] == pytest.approx(exponent)
    assert seeds["seeds_for_0.8"] == pytest.approx(3 * seeds["shrink_for_0.8"] ** (-1 / exponent))
    stated += [f"exponent {exponent:.2f}", f"{seeds['shrink_for_0.8']:.2f} of their width",
               f"{seeds['seeds_for_0.8']:.1f} seeds"]
    missing = [s for s in stated if s not in README]
    assert not missing, missing


def test_the_hours_the_seeds_would_take_are_v7s_wall_times():
    """v7's fitted runs (within 4 epochs) and held-out runs, by their committed wall_s, and the fitted runs
    scaled to the seeds the README names."""
    rows = [json.loads(line) for line in (ROOT / "docs/scaling_cpu_v7/report/runs.jsonl").read_text().splitlines()]
    fitted = sum(r["wall_s"] for r in rows if not r["holdout"] and r["images"] / r["unique_images"] <= 4 + 1e-9) / 3600
    held = sum(r["wall_s"] for r in rows if r["holdout"]) / 3600
    scaled = fitted * TABLE["seeds"]["seeds_for_0.8"] / 3
    stated = [f"fitted runs took {fitted:.2f} h at 3 seeds", f"about {scaled:.1f} h", f"add {held:.2f} h at 3 seeds"]
    missing = [s for s in stated if s not in README]
    assert not missing, missing


def test_the_shrink_a_goal_asks_for_matches_the_normal_quantile():
    """One cell of 95% width w: a right law is within 1 point with chance 0.8 once w shrinks by 3.92 /
    (w z_0.9), z_0.9 the normal's 0.9 quantile (|error| <= 1 with chance 0.8)."""
    for width in (4.0, 7.0):
        assert script.shrink_for([width]) == pytest.approx(3.92 / (width * norm.ppf(0.9)), rel=0.01)
    assert script.shrink_for([6.0, 6.0]) > script.shrink_for([6.0])  # two cells average out: less shrink needed
