"""docs/scaling_backtest/: the committed backtest of v6's table states what its backtest.json holds,
and its last three targets land where v4's, v5's and v6's held-out tests did, each from its own report."""
import json
import re

import numpy as np
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


def test_with_kaplans_form_declared_the_readme_states_what_the_backtest_has():
    result = json.loads((FOLDER / "v6_ratio4_kaplan/backtest.json").read_text())
    text = " ".join((FOLDER / "README.md").read_text().split())
    assert all(law["form"] in ("kaplan", None) for g in result["gaps"] for law in g["laws"].values())
    s = result["summary"]["plain"]
    assert f"mean error {s['predicted']:.2f} over {s['gaps']} targets (persistence {s['persistence']:.2f}, " \
           f"log-linear {s['loglinear']:.2f}): closer than persistence at {s['below_persistence']}" in text
    kd = [(g["errors"]["kd"], g["laws"]["kd"]["sizes"], g["target"]) for g in result["gaps"] if "kd" in g["errors"]]
    enough = [e for e, sizes, _ in kd if sizes >= 4]
    mean = {k: np.mean([e[k] for e in enough]) for k in ("predicted", "persistence", "loglinear")}
    assert f"at the {len(enough)} targets with at least 4 KD sizes below, mean error {mean['predicted']:.2f} " \
           f"(persistence {mean['persistence']:.2f}, log-linear {mean['loglinear']:.2f}), closer than persistence " \
           f"at {sum(e['predicted'] < e['persistence'] for e in enough)} of them" in text
    few = next((e, t) for e, sizes, t in kd if sizes == 3)
    assert few[1] == 1561610.0 and f"it misses by {few[0]['predicted']:.2f}" in text
    pairs = [(g["target"], m) for g in result["gaps"] for m, e in g["errors"].items() if m != "all"]
    within = [(t, m) for g in result["gaps"] for m, e in g["errors"].items() if m != "all" and e["predicted"] <= 1.0
              for t in [g["target"]]]
    assert len(pairs) == 10 and sorted(within) == [(107284682.0, "kd"), (448371370.0, "plain")]
    at = {g["target"]: g["errors"]["kd"] for g in result["gaps"] if "kd" in g["errors"]}
    assert f"(Kaplan's form: {at[6342410.0]['predicted']:.2f} there)" in text
    assert f"at 448M it still misses by {at[448371370.0]['predicted']:.2f} where persistence misses by " \
           f"{at[448371370.0]['persistence']:.2f}" in text
