"""docs/scaling_backtest/: the committed backtest of v6's table states what its backtest.json holds,
and its last three targets land where v4's, v5's and v6's held-out tests did, each from its own report."""
import json
import re

import pytest

from conftest import ROOT

FOLDER = ROOT / "docs/scaling_backtest"


def _result():
    return json.loads((FOLDER / "v6_ratio4/backtest.json").read_text())


def test_the_readme_states_each_targets_errors_and_the_summary_as_the_backtest_has_them():
    text, result = (FOLDER / "README.md").read_text(), _result()
    rows = 0
    for g in result["gaps"]:
        for method, e in g["errors"].items():
            if method == "all":
                continue
            law = g["laws"][method]
            cells = [f"{e[k]:.2f}" for k in ("predicted", "persistence", "loglinear")]
            pattern = rf"\| {method} \| {law['form']} \({law['sizes']}\) \| {' | '.join(map(re.escape, cells))} \|"
            assert re.search(pattern, text), pattern
            rows += 1
    assert rows == 9
    for method, s in result["summary"].items():
        if method == "all":
            continue
        bullet = " ".join(text.split(f"- **{method}**: ")[1].split("\n- ")[0].split())
        assert f"over {s['gaps']} targets the law's mean error is {s['predicted']:.2f}, persistence's " \
               f"{s['persistence']:.2f} and log-linear's {s['loglinear']:.2f}" in bullet, bullet
        every = "all " if s["below_persistence"] == s["gaps"] else ""
        assert f"closer than persistence at {every}{s['below_persistence']}, closer than log-linear at " \
               f"{s['below_loglinear']}, within 1.0 point at {s['within_1']}" in bullet, bullet

@pytest.mark.parametrize("study, target", [("v4", 26599562.0), ("v5", 107284682.0), ("v6", 448371370.0)])
def test_the_last_targets_repeat_the_studies_held_out_tests(study, target):
    gap = next(g for g in _result()["gaps"] if g["target"] == target)
    report = json.loads((ROOT / f"docs/scaling_cpu_{study}/report/fits.json").read_text())["holdout_errors"]
    for method in ("plain", "kd", "all"):
        for key in ("predicted", "persistence", "loglinear"):
            assert gap["errors"][method][key] == pytest.approx(report[method][key], abs=0.005), (method, key)
