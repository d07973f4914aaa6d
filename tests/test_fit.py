"""`distill fit`: the laws' gradients, a law recovered from noiseless runs, every crossing inside the
data (and none outside), a floor on its bound flagged, gains paired within the cell, the teacher
amortised over students (not seed replicates), the committed table's fields, one-line refusals, and a
table that mixes precisions. The committed studies' own checks: test_committed_studies.py."""
import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq, check_grad

from conftest import ROOT
from distill.cli import main
from distill.commands.fit import MIN_BOOTSTRAP
from distill.report.fit_claims import baselines, compare, gains, holdout_errors, power, students_of, teacher_share
from distill.report.fit_report import markdown
from distill.report.fit_runs import MethodFit, Solution, fit_form, parameters, references, solve
from distill.report.laws import FORMS
from distill.report.run_table import read_runs

COMMITTED = ROOT / "docs/scaling_cpu/runs.jsonl"


def test_each_laws_gradient_matches_finite_differences():
    x = (np.array([1.0, 3.0, 8.0]), np.array([1.0, 2.0, 4.0]), np.array([1.0, 6.0, 30.0]))
    y = np.array([0.3, 0.2, 0.15])
    for form in FORMS.values():
        theta = np.array(form.starts(x, y)[5]) + 0.01
        for j in range(3):
            xj = tuple(a[j:j + 1] for a in x)
            err = check_grad(lambda t: form.value_grad(t, xj)[0][0], lambda t: form.value_grad(t, xj)[1][0], theta)
            assert err < 1e-5 * max(1.0, abs(form.value_grad(theta, xj)[0][0])), (form.name, j, err)


def _grid_rows(law, sizes=(1e5, 3e5, 1e6), images=(2e4, 4e4, 8e4), seeds=(0, 1), method="plain", noise=None):
    rows = []
    for n in sizes:
        for d in images:
            for s in seeds:
                err = law(n, d) * (1.0 if noise is None else math.exp(noise()))
                rows.append({"method": method, "params": n, "images": d, "flops": 100.0 * n * d, "seed": s,
                             "top1": 100 * (1 - err), "holdout": False})
    return rows


def test_a_law_is_recovered_from_noiseless_runs():
    def law(n, d):  # chinchilla in units of the smallest n and d
        return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6

    rows = _grid_rows(law, seeds=(0,))
    sol = fit_form(FORMS["chinchilla"], rows, references(rows))
    e0, la, alpha, lb, beta = sol.theta
    assert sol.converged and sol.starts_at_best >= 2
    assert (e0, math.exp(la), alpha, math.exp(lb), beta) == pytest.approx((0.1, 0.3, 0.4, 0.5, 0.6), rel=1e-3)


def _zhai_fit(method, theta, c_max, teacher_flops=0.0):
    """A MethodFit of Zhai's law with known parameters over student computes [1e11, c_max * 1e11]
    (sizes 1e5 and 1e6, flops = 100 N D); its 'refits' are the law itself, nudged."""
    rows = [{"method": method, "params": n, "images": d, "flops": 100.0 * n * d, "seed": 0, "top1": 50.0,
             "teacher_flops": teacher_flops} for n in (1e5, 1e6) for d in (1e4, c_max * 1e3)]
    draws = np.array([np.asarray(theta) * (1 + 0.002 * k) for k in (-2, -1, 0, 1, 2)])
    sol = Solution(np.asarray(theta, float), 0.0, True, 1, 1, 1)
    return MethodFit(method, FORMS["zhai"], sol, references(rows), {"zhai": 0.0}, draws,
                     np.zeros(draws.shape, bool), 5, np.zeros(1), rows)


def test_every_crossing_inside_the_data_is_reported_with_an_interval_and_none_outside():
    # plain 0.2 c^-1 + 0.15 against kd 0.2 c^-0.3 + 0.10: plain is lower between two crossings
    plain_theta, kd_theta = (math.log(0.2), 1.0, 0.15, 0.0), (math.log(0.2), 0.3, 0.10, 0.0)

    def gap(c):
        return 0.2 / c + 0.15 - (0.2 * c ** -0.3 + 0.10)

    truth = [brentq(gap, 1.0, 10.0), brentq(gap, 10.0, 1e4)]
    assert 1 < truth[0] < 10 < truth[1] < 1e3
    both = compare(_zhai_fit("plain", plain_theta, 1e3), _zhai_fit("kd", kd_theta, 1e3), "free", {"plain": 4, "kd": 4})
    assert [x["flops"] / 1e11 for x in both["crossings"]] == pytest.approx(truth, rel=1e-6)  # both, not the first
    for x in both["crossings"]:
        assert x["low"] <= x["flops"] <= x["high"] and x["draws_with_crossing"] == 1.0
    assert [s["lower_error"] for s in both["segments"]] == ["kd", "plain", "kd"]
    inside = compare(_zhai_fit("plain", plain_theta, 30.0), _zhai_fit("kd", kd_theta, 30.0), "free",
                     {"plain": 4, "kd": 4})
    assert both["range"][1] / 1e11 == pytest.approx(1e3) and inside["range"][1] / 1e11 == pytest.approx(30.0)
    assert [x["flops"] / 1e11 for x in inside["crossings"]] == pytest.approx(truth[:1], rel=1e-6)  # none beyond 30


def test_the_teacher_moves_the_crossing_and_a_teacher_beyond_the_data_gives_none():
    plain_theta, kd_theta = (math.log(0.2), 1.0, 0.15, 0.0), (math.log(0.2), 0.3, 0.10, 0.0)
    plain, kd = _zhai_fit("plain", plain_theta, 1e3), _zhai_fit("kd", kd_theta, 1e3, teacher_flops=8e11)
    share = teacher_share(kd, "amortised", 4)
    assert share == 2e11 and teacher_share(kd, "full", 4) == 8e11 and teacher_share(kd, "free", 4) == 0.0
    amortised = compare(plain, kd, "amortised", {"plain": 4, "kd": 4})
    assert amortised["range"][0] == pytest.approx(1e11 + share)

    def gap(c):  # total compute c (units of 1e11); kd's student got c - 2
        return 0.2 / c + 0.15 - (0.2 * (c - 2.0) ** -0.3 + 0.10)

    roots = [x["flops"] / 1e11 for x in amortised["crossings"]]
    assert roots and all(abs(gap(r)) < 1e-9 for r in roots) and all(3.0 <= r <= 1e3 for r in roots)
    full = compare(plain, _zhai_fit("kd", kd_theta, 1e3, teacher_flops=1e15), "full", {"plain": 4, "kd": 4})
    assert full["range"] is None and full["crossings"] == []


def test_a_floor_on_its_bound_is_flagged_and_never_reported_as_an_asymptote():
    c = np.geomspace(1, 100, 9)
    y = 0.15 + 0.02 * np.log10(c)  # error that does not fall with compute: the floor is pushed to min(y)
    rows = [{"method": "plain", "params": 1e5, "images": 1e4 * ci, "flops": 1e11 * ci, "seed": 0,
             "top1": 100 * (1 - yi)} for ci, yi in zip(c, y)]
    sol = fit_form(FORMS["zhai"], rows, references(rows))
    fit = MethodFit("plain", FORMS["zhai"], sol, references(rows), {"zhai": 0.0}, np.empty((0, 4)),
                    np.empty((0, 4), bool), 0, np.zeros(1), rows)
    e0 = parameters(fit)["E0"]
    assert e0["floor"] and e0["on_bound"] and min(abs(e0["value"] - b) for b in e0["bounds"]) < 1e-6
    assert e0["bounds"][1] == pytest.approx(0.15)  # the floor may not exceed the smallest measured error
    hits = np.zeros((20, 4), bool)
    hits[:3, 2] = True  # 15% of the refits: flagged even where the point estimate is inside
    inner = MethodFit("plain", FORMS["zhai"], Solution(np.array([0.0, 0.5, 0.05, 0.0]), 0.0, True, 1, 1, 1),
                      references(rows), {}, np.zeros((20, 4)), hits, 20, np.zeros(1), rows)
    assert parameters(inner)["E0"]["on_bound"] and parameters(inner)["E0"]["bound_share"] == 0.15
    hits[2, 2] = False  # 10%: not more than the threshold
    assert not parameters(inner)["E0"]["on_bound"]
    law = {"form": "zhai", "expression": "", "candidates": {"zhai": 0.0}, "runs": 9, "sizes": [1e5],
           "fit": {"starts": 1, "converged": True, "starts_at_best": 1}, "bootstrap": {"converged": 0, "draws": 0},
           "reference": references(rows), "parameters": parameters(fit)}
    result = {"settings": {"rows": 9, "held_out": 0, "bootstrap": 0, "seed": 0, "huber_delta": 1e-3},
              "laws": {"plain": law}, "predictions": [], "holdout_errors": {}, "comparisons": [], "gains": [],
              "students": {"plain": 1}}
    line = next(ln for ln in markdown(result, []).splitlines() if ln.startswith("| E0 "))
    assert "on a bound" in line and "not an estimate" in line


def test_gains_pair_each_cell_with_the_same_student_and_budget_by_seed():
    rows = read_runs(COMMITTED)
    found = {(g["size"], g["images"]): g for g in gains(rows, baselines(rows))}
    g = found[("w64d2", 39936.0)]
    kd = {r["seed"]: r["top1"] for r in rows if r.get("run", "").startswith("kd_w64d2_e8_")}
    plain = {r["seed"]: r["top1"] for r in rows if r.get("run", "").startswith("plain_w64d2_e8_")}
    assert g["gain"] == pytest.approx(np.mean([kd[s] - plain[s] for s in (0, 1)]))  # -1.69, not +7.64
    assert g["gain"] < 0 and g["half_width"] == pytest.approx(16.07, abs=0.01) and g["seeds"] == [0, 1]
    assert len(found) == 12 and all(v["baseline"] == "plain" for v in found.values())


def test_the_teacher_is_amortised_over_students_not_seed_replicates():
    rows = read_runs(COMMITTED)
    assert students_of(rows, "kd") == 12  # 4 sizes x 3 budgets; the 24 runs are 2 seeds of each
    teacher = {r["teacher_flops"] for r in rows if r["method"] == "kd"}
    assert len(teacher) == 1 and all(r.get("teacher_flops") is None for r in rows if r["method"] == "plain")
    assert sum(r["holdout"] for r in rows) == 12 and {r["params"] for r in rows if r["holdout"]} == {1252330.0}


def test_solve_records_how_the_starts_went():
    x = (np.ones(6), np.ones(6), np.geomspace(1, 50, 6))
    y = 0.2 * x[2] ** -0.4 + 0.1
    sol = solve(FORMS["zhai"], x, y, FORMS["zhai"].starts(x, y))
    assert sol.converged and sol.starts == 24 and 1 <= sol.starts_at_best <= sol.starts_converged <= 24


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("line, says", [
    ({"method": "plain", "params": 1e5, "images": 2e4, "flops": 1e12, "seed": 0}, "line 2: missing field 'top1'"),
    ({"method": "plain", "params": 1e5, "images": 2e4, "flops": 1e12, "seed": 0, "top1": 120}, "'top1'"),
    ({"method": "plain", "params": "big", "images": 2e4, "flops": 1e12, "seed": 0, "top1": 70}, "'params'"),
    ({"method": "plain", "params": 1e5, "images": 2e4, "flops": 1e12, "seed": 0, "top1": 70, "holdout": "yes"},
     "'holdout'"),
])
def test_a_bad_row_is_refused_in_one_line_naming_its_line_and_field(tmp_path, capsys, line, says):
    good = {"method": "plain", "params": 1e5, "images": 2e4, "flops": 1e12, "seed": 0, "top1": 70.0}
    runs = _write(tmp_path / "runs.jsonl", [good, line])
    assert main(["fit", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says.replace("line 2", f"{runs}:2") in err
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_and_an_unknown_size_are_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["fit", str(COMMITTED), "--out", str(tmp_path / "out")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["fit", str(COMMITTED), "--out", str(tmp_path / "new"), "--holdout-params", "7"]) == 2
    assert "no run has that many parameters" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_table_too_small_to_choose_a_law_is_refused_in_one_line(tmp_path, capsys):
    rows = [{"method": "plain", "params": n, "images": d, "flops": 100 * n * d, "seed": 0, "top1": 70.0}
            for n in (1e5, 3e5) for d in (2e4, 4e4, 8e4)]
    assert main(["fit", str(_write(tmp_path / "runs.jsonl", rows)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no method could be fitted: plain: ") and "at least 3 sizes (a power law with its floor), got 2" in err
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_three_sizes_fit_a_declared_law_but_do_not_choose_one(tmp_path, capsys):
    """Leaving one of three sizes out fits two, which do not determine a power law in size with its floor
    (docs/fit.md): the choice is refused in one line naming --form, and a declared law is fitted, said so."""
    def law(n, d):
        return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6

    runs = _write(tmp_path / "runs.jsonl", _grid_rows(law, seeds=(0,)))
    assert main(["fit", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 4 sizes, so that each fold keeps 3, got 3" in err and "--form" in err and "\n" not in err
    for bad, says in (("plain=hoffmann", "--form plain=hoffmann: no such law"), ("kd=chinchilla", "--form kd=chinchilla: no method 'kd' is fitted here")):
        assert main(["fit", str(runs), "--out", str(tmp_path / "out"), "--form", bad]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["fit", str(runs), "--out", str(tmp_path / "out"), "--form", "chinchilla", "--bootstrap", "10"]) == 0
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    plain = fits["laws"]["plain"]
    assert fits["settings"]["forms"] == {"plain": "chinchilla"} and plain["declared"] and plain["cv_error"] is None
    assert [p["value"] for p in plain["parameters"].values()] == pytest.approx([0.1, math.log(0.3), 0.4, math.log(0.5), 0.6], abs=1e-3)
    assert "`chinchilla`" in (tmp_path / "out" / "report.md").read_text()
    assert "Declared, not chosen by leaving sizes out" in (tmp_path / "out" / "report.md").read_text()


def test_planned_held_out_rows_are_predicted_before_they_are_run(tmp_path):
    """A held-out row without top1 is a planned run: predicted (no measurement), never fitted; a fitted
    row without top1 is still refused. The noiseless law below predicts itself at the planned size."""
    def law(n, d):
        return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6

    rows = _grid_rows(law, sizes=(1e5, 2e5, 4e5, 8e5), seeds=(0,))
    planned = [{"method": "plain", "params": 1.6e6, "images": d, "flops": 100.0 * 1.6e6 * d, "seed": s,
                "holdout": True} for d in (2e4, 8e4) for s in (0, 1, 2)]
    out = tmp_path / "out"
    assert main(["fit", str(_write(tmp_path / "runs.jsonl", rows + planned)), "--out", str(out),
                 "--bootstrap", "10", "--form", "chinchilla"]) == 0  # the runs' law, declared: no choice to time
    preds = json.loads((out / "fits.json").read_text())["predictions"]
    assert [(p["images"], p["measured_top1"], p["seeds"]) for p in preds] == [(2e4, None, 0), (8e4, None, 0)]
    for p in preds:
        assert p["predicted_top1"] == pytest.approx(100 * (1 - law(1.6e6, p["images"])), abs=0.05)
        assert p["low"] <= p["predicted_top1"] <= p["high"]
    del rows[0]["top1"]
    assert main(["fit", str(_write(tmp_path / "bad.jsonl", rows + planned)), "--out", str(tmp_path / "o2")]) == 2


def test_max_epochs_fits_only_the_runs_that_repeat_their_images_little(tmp_path, capsys):
    """Runs beyond 4 epochs follow Muennighoff et al. 2023's effective data, D' = U (1 + R* (1 - exp(-R / R*))),
    R the repetitions after the first epoch (R* = 3): the chinchilla law in images seen holds only up to
    about 4 epochs. Cut there, the fit predicts a 4x larger size (than the largest fitted) at 1 to 3 epochs as the true law does;
    uncut, it bends to the repeated runs and misses."""
    unique = 2e4

    def law(n, d):  # chinchilla in images seen, the law of every run of at most 4 epochs
        return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / unique) ** -0.6

    def measured(n, d):
        r = d / unique - 1
        return law(n, d if r <= 3 else unique * (1 + 3 * (1 - math.exp(-r / 3))))

    rows = [{**r, "unique_images": unique} for r in _grid_rows(measured, sizes=(1e5, 2e5, 4e5, 8e5),
                                                                images=(2e4, 4e4, 8e4, 3.2e5, 1.28e6), seeds=(0,))]
    planned = [{"method": "plain", "params": 3.2e6, "images": d, "flops": 100.0 * 3.2e6 * d, "seed": 0,
                "holdout": True} for d in (2e4, 4e4, 6e4)]  # a planned row is not fitted: it needs no unique_images
    runs = _write(tmp_path / "runs.jsonl", rows + planned)
    missed = {}
    for cut in ("4", None):
        out = tmp_path / f"cut{cut}"
        assert main(["fit", str(runs), "--out", str(out), "--bootstrap", "10", "--form", "chinchilla",
                     *(["--max-epochs", cut] if cut else [])]) == 0  # the law of the runs within 4 epochs, declared
        fits = json.loads((out / "fits.json").read_text())
        missed[cut] = max(abs(p["predicted_top1"] - 100 * (1 - law(3.2e6, p["images"]))) for p in fits["predictions"])
        if cut:
            assert fits["settings"]["max_epochs"] == 4 and fits["laws"]["plain"]["beyond_max_epochs"] == 8
            assert fits["laws"]["plain"]["runs"] == 12 and fits["laws"]["plain"]["declared"]
            assert "at most 4 times" in (out / "report.md").read_text()
        else:
            assert "max_epochs" not in fits["settings"] and "beyond_max_epochs" not in fits["laws"]["plain"]
    assert missed["4"] < 0.05 and missed[None] > 0.5, missed
    bare = _write(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "unique_images"} for r in rows])
    for table, cut, says in ((bare, "4", "has no unique_images"), (runs, "0.5", "at least once")):
        assert main(["fit", str(table), "--out", str(tmp_path / "refused"), "--max-epochs", cut]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err
        assert not (tmp_path / "refused").exists()


def test_the_laws_error_against_each_baseline_has_an_interval_from_its_cells_seeds():
    """The law's mean absolute error minus each baseline's, by hand; its 95% interval from resampling each
    cell's seeds lies within what any resample can give (enumerated here), is one point where the seeds agree
    or where the law and the baseline miss on the same side, and is absent for a cell of one seed."""
    import itertools

    seeds = {"a": [70.0, 71.0, 72.5], "b": [60.0, 60.0, 60.0]}
    preds = [{"method": "plain", "params": 1e6, "images": images, "predicted_top1": law, "persistence_top1": pers,
              "loglinear_top1": loglin, "measured_top1": float(np.mean(seeds[cell]))}
             for cell, images, law, pers, loglin in (("a", 1e4, 69.5, 66.0, 72.0), ("b", 2e4, 59.0, 55.0, 61.0))]
    held = [{"method": "plain", "params": 1e6, "images": p["images"], "top1": t, "seed": i}
            for p, cell in zip(preds, "ab") for i, t in enumerate(seeds[cell])]
    errors = holdout_errors(preds, held, seed=0)["all"]
    for base in ("persistence", "loglinear"):
        by_hand = np.mean([abs(p["predicted_top1"] - p["measured_top1"]) - abs(p[f"{base}_top1"] - p["measured_top1"])
                           for p in preds])
        d = errors[f"law_minus_{base}"]
        assert d["value"] == pytest.approx(by_hand, abs=1e-12)
        every = [np.mean([abs(p["predicted_top1"] - m) - abs(p[f"{base}_top1"] - m) for p, m in zip(preds, means)])
                 for means in itertools.product(*(
                     [np.mean(r) for r in itertools.product(seeds[c], repeat=3)] for c in "ab"))]
        assert min(every) - 1e-9 <= d["low"] <= d["value"] <= d["high"] <= max(every) + 1e-9
    # persistence misses both cells low, as the law does: the difference is the same in every resample
    assert errors["law_minus_persistence"]["low"] == pytest.approx(errors["law_minus_persistence"]["high"])
    # log-linear misses cell a high where the law misses it low: a's seeds move the difference
    assert errors["law_minus_loglinear"]["high"] - errors["law_minus_loglinear"]["low"] > 0.3
    assert holdout_errors(preds, held[:1] + held[3:], seed=0)["all"]["law_minus_loglinear"] is None


def test_a_table_whose_rows_computed_in_two_precisions_says_so():
    """`train.mixed_precision=auto` is bf16 on one CPU and fp32 on another: a table mixing them is fitted as one,
    and the report says it; a table in one precision, or one that does not record it, adds nothing."""
    from distill.report.fit_report import fit_rows

    def law(n, d):
        return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6

    rows, declared = _grid_rows(law), {"plain": "chinchilla"}  # three sizes: a declared law
    result, _ = fit_rows(rows, bootstrap=0, students=None, forms=declared)
    assert "precisions" not in result["settings"] and "precisions" not in markdown(result, [])
    for i, r in enumerate(rows):
        r["mixed_precision"] = "bf16"
    result, _ = fit_rows(rows, bootstrap=0, students=None, forms=declared)
    assert result["settings"]["precisions"] == {"bf16": 18} and "precisions" not in markdown(result, [])
    rows[0]["mixed_precision"], rows[1]["mixed_precision"] = "no", None
    result, _ = fit_rows(rows, bootstrap=0, students=None, forms=declared)
    assert result["settings"]["precisions"] == {"bf16": 16, "no": 1}
    assert "**The rows computed in 2 precisions** (bf16 16, fp32 1 rows; the rest do not say)" in markdown(result, [])
    # the fitted rows in one precision and the held-out rows in another: said as such
    held = _grid_rows(law, sizes=(4e6,), images=(2e4,))
    for r in rows + held:
        r["mixed_precision"], r["holdout"] = ("no", True) if r in held else ("bf16", False)
    result, _ = fit_rows(rows + held, bootstrap=MIN_BOOTSTRAP, students=None, forms=declared)  # intervals need refits
    assert result["settings"]["held_out_precisions"] == {"no": 2}
    assert "**The held-out rows computed in fp32 (2), the fitted rows in bf16 (18)**" in markdown(result, [])


def test_a_prediction_outside_its_own_interval_is_flagged_and_plotted_as_it_is(tmp_path):
    """A percentile interval over the refits need not hold the fit's point (refits that settle in another
    minimum): the report marks the cell and says what it means, and the plot draws the interval as it is
    (before, matplotlib refused the negative error bar and `distill fit` died on it)."""
    from distill.report.fit_report import predicted_vs_measured

    result = json.loads((ROOT / "docs/scaling_cpu_v6/report/fits.json").read_text())
    assert "(outside*)" not in markdown(result, [])
    p = result["predictions"][0]
    p["low"], p["high"] = p["predicted_top1"] + 0.5, p["predicted_top1"] + 2.0
    text = markdown(result, [])
    assert text.count("(outside*)") == 1 and "*The fit's prediction lies outside its own interval" in text
    assert predicted_vs_measured(result["predictions"], tmp_path).stat().st_size > 0


def test_power_is_the_chance_a_right_laws_error_is_within_the_goal_its_cells_moving_together():
    """fit_claims.power against closed forms: a right law's error at a cell drawn N(0, s) is within 1 point
    with chance 2 Phi(1 / s) - 1; two cells of one law that move together (the same refit) keep that
    chance, two independent ones have P(|a| + |b| <= 2), integrated here with scipy."""
    from scipy import integrate
    from scipy.stats import norm

    s, rng = 1.5, np.random.default_rng(0)
    z = rng.standard_normal((2, 200_000))
    cell = [{"method": m, "predicted_top1": 70.0, "measured_top1": None} for m in ("kd", "plain")]
    one = power(cell[:1], [70.0 + s * z[0]])["all"]
    assert one["p_within_goal"] == pytest.approx(2 * norm.cdf(1 / s) - 1, abs=0.005)
    assert one["expected_mae"] == pytest.approx(s * math.sqrt(2 / math.pi), rel=0.01)
    together = power([cell[0], cell[0]], [70.0 + s * z[0], 70.0 - s * z[0]])["all"]
    assert together["p_within_goal"] == pytest.approx(one["p_within_goal"], abs=1e-12)
    apart = power(cell, [70.0 + s * z[0], 70.0 + s * z[1]])
    by_quad = 2 * integrate.quad(lambda a: norm.pdf(a, scale=s) * (2 * norm.cdf((2 - a) / s) - 1), 0, 2)[0]
    assert apart["all"]["p_within_goal"] == pytest.approx(by_quad, abs=0.005)
    assert apart["kd"]["cells"] == apart["plain"]["cells"] == 1 and apart["all"]["cells"] == 2
    assert power(cell, [70.0 + s * z[0], 70.0 + s * z[1]], goal=0.5)["all"]["p_within_goal"] < by_quad
    assert power([], []) == {} and "p_as_large" not in one
    missed = [dict(cell[0], measured_top1=70.0 + 2 * s)]  # two standard deviations out: 2 (1 - Phi(2)) as large
    assert power(missed, [70.0 + s * z[0]])["all"]["p_as_large"] == pytest.approx(2 * norm.sf(2), abs=0.003)
