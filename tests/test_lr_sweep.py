"""A learning rate per size (`scaling.lr_sweep`): the sweep's runs first, each size's best rate chosen
into lrs.json, every later run of that size with it; the held-out size swept after the prediction.
Training is stood in for: a run is a summary.json whose top-1 depends on its rate."""
import json
import math

import pytest
import yaml

from conftest import ROOT
from distill.errors import ConfigError
from distill.report import study as study_mod
from distill.report.study import plan, run_study

BEST = {"a": 1e-3, "b": 2e-3}  # the rate that scores best on each size


def _study(tmp_path, budgets=False, **scaling):
    path = tmp_path / "s.yaml"
    sizes = {"a": ["student.embed_dim=64", "student.depth=2", "student.num_heads=2"],
             "b": ["student.embed_dim=96", "student.depth=2", "student.num_heads=3"]}
    extra = {"budgets": [2.2e11, 8.8e11]} if budgets else {"epochs": [1, 2]}
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
        "overrides": ["data.train_subset=5000", "train.lr=1e-3", "train.cooldown=0.25"],
        "scaling": {"sizes": sizes, "lr_sweep": [5e-4, 1e-3, 2e-3], **extra,
                    "methods": {"plain": {"recipe": str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")}}, **scaling}}))
    return path


def _setting(cmd, key):
    return [c.split("=", 1)[1] for c in cmd if c.startswith(key + "=")][-1]


def test_the_sweep_runs_first_at_the_smallest_budget_and_the_ladder_waits_for_its_rate(tmp_path):
    jobs = plan(_study(tmp_path, budgets=True))
    names = [j.run_dir.name for j in jobs]
    sweep_a = ["lrsweep_a_lr0.0005_s0", "lrsweep_a_lr0.001_s0", "lrsweep_a_lr0.002_s0"]
    assert names[:3] == sweep_a and all(not n.startswith("lrsweep_a") for n in names[3:])
    small = min((j for j in jobs if j.variant.startswith("plain_a_")), key=lambda j: int(_setting(j.cmd, "train.epochs")))
    for j in jobs[:3]:  # the smallest budget's epochs, from scratch (wsd: what its fork is), one seed, its rate
        assert _setting(j.cmd, "train.epochs") == _setting(small.cmd, "train.epochs")
        assert (_setting(j.cmd, "train.resume"), _setting(j.cmd, "train.schedule"), j.seed) == ("auto", "wsd", 0)
        assert not j.holdout and j.waits_for_lr is None
    assert [float(_setting(j.cmd, "train.lr")) for j in jobs[:3]] == [5e-4, 1e-3, 2e-3]
    ladder = [j for j in jobs if j.variant.startswith("plain_")]
    assert {j.waits_for_lr for j in ladder} == {"a", "b"}
    held = [j for j in jobs if j.holdout]  # b is held out: its sweep too, before its ladder runs
    assert [j.run_dir.name for j in held][:3] == [n.replace("_a_", "_b_") for n in sweep_a]
    with pytest.raises(ConfigError, match="lr_sweep chooses each size's rate"):
        plan(_study(tmp_path), ["train.lr=3e-3"])


def _fake_train(order):
    def run(cmd):
        name, folder, lr = _setting(cmd, "name"), _setting(cmd, "output_dir"), float(_setting(cmd, "train.lr"))
        size = name.split("_")[1]
        order.append((name, lr))
        if name == "lrsweep_a_lr0.002_s0" and getattr(run, "fail", False):
            return 1, None  # exit status, no stop request
        top1 = 80 - 10 * abs(math.log2(lr / BEST[size]))
        d = __import__("pathlib").Path(folder) / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"name": name, "final_top1": top1, "seed": 0}))
        return 0, None
    return run


def _stub_reports(monkeypatch, predicted):
    def predict(folder, done, sc, held):
        predicted.append(len(done))
        (folder / "prediction.json").write_text(json.dumps({"predictions": []}))
        return folder / "prediction.json"

    monkeypatch.setattr(study_mod.scaling, "predict_holdout", predict)
    monkeypatch.setattr(study_mod.scaling, "check_predictable", lambda path, sc: None)  # its precondition: 3 sizes
    monkeypatch.setattr(study_mod.scaling, "write_scaling_report", lambda runs, sc, folder, out: out / "f.json")
    monkeypatch.setattr(study_mod, "write_report", lambda runs, out, *a: (out.mkdir(parents=True, exist_ok=True), out / "r.md")[1])


def test_each_size_runs_at_its_best_rate_recorded_in_lrs_json_and_a_rerun_keeps_it(tmp_path, monkeypatch, capsys):
    order, predicted = [], []
    monkeypatch.setattr(study_mod, "run_passing_stops", _fake_train(order))
    _stub_reports(monkeypatch, predicted)
    path = _study(tmp_path)
    assert run_study(path) == 0
    folder = tmp_path / "out" / "s"
    lrs = json.loads((folder / "lrs.json").read_text())
    assert {s: v["chosen"] for s, v in lrs.items()} == BEST
    assert [t["lr"] for t in lrs["a"]["tried"]] == [5e-4, 1e-3, 2e-3] and lrs["a"]["epochs"] == 1
    assert lrs["a"]["edge"] is None and lrs["b"]["edge"] == "highest"  # b's best, 2e-3, is the grid's highest
    said = capsys.readouterr().out
    assert "b: the best rate, 0.002, is the sweep's highest: a better one may lie above it" in said
    assert "a: the best rate" not in said
    names = [n for n, _ in order]
    assert names.index("lrsweep_b_lr0.0005_s0") > names.index("plain_a_e2_s1")  # b swept after a's runs...
    assert predicted == [4 + 3]  # ...and after the prediction, made from a's 4 ladder runs (and its sweep)
    for name, lr in order:
        if name.startswith("plain_"):
            assert lr == BEST[name.split("_")[1]], name
    (folder / "lrsweep_a_lr0.0005_s0" / "summary.json").write_text(json.dumps({"final_top1": 99.0}))
    order.clear()
    assert run_study(path) == 0 and order == []  # complete runs skipped, the choice kept
    assert json.loads((folder / "lrs.json").read_text())["a"]["chosen"] == 1e-3


def test_a_size_whose_sweep_failed_runs_nothing_else(tmp_path, monkeypatch, capsys):
    order, predicted = [], []
    fake = _fake_train(order)
    fake.fail = True
    monkeypatch.setattr(study_mod, "run_passing_stops", fake)
    _stub_reports(monkeypatch, predicted)
    assert run_study(_study(tmp_path)) == 1
    assert not any(n.startswith("plain_a") for n, _ in order)
    assert "the learning rate of size a is not chosen" in capsys.readouterr().err
    assert "a" not in json.loads((tmp_path / "out" / "s" / "lrs.json").read_text())


def test_a_best_rate_on_the_grids_edge_is_widened_a_step_at_a_time_until_bracketed(tmp_path, monkeypatch, capsys):
    """b's best rate, 2e-3, is the grid's highest: with lr_sweep_widen 2 the study tries 4e-3 (a grid step
    beyond), finds 2e-3 still best, and chooses it, bracketed, before any of b's ladder runs; a size whose
    best is inside the grid (a) is never widened."""
    order, predicted = [], []
    monkeypatch.setattr(study_mod, "run_passing_stops", _fake_train(order))
    _stub_reports(monkeypatch, predicted)
    path = _study(tmp_path, lr_sweep_widen=2)
    assert run_study(path) == 0
    lrs = json.loads((tmp_path / "out" / "s" / "lrs.json").read_text())
    assert lrs["b"]["chosen"] == 2e-3 and lrs["b"]["edge"] is None and lrs["b"]["widened"] == [4e-3]
    assert [t["lr"] for t in lrs["b"]["tried"]] == [5e-4, 1e-3, 2e-3, 4e-3]
    assert lrs["a"]["widened"] == [] and len(lrs["a"]["tried"]) == 3
    names = [n for n, _ in order]
    assert names.count("lrsweep_b_lr0.004_s0") == 1
    assert names.index("lrsweep_b_lr0.004_s0") < min(i for i, n in enumerate(names) if n.startswith("plain_b_"))
    assert all(lr == 2e-3 for n, lr in order if n.startswith("plain_b_"))
    assert "b: the best rate, 0.002, is the sweep's highest: 0.004 is tried too" in capsys.readouterr().out
    order.clear()
    assert run_study(path) == 0 and order == []  # a re-run plans the widened rate and skips it, complete


def test_widening_a_sweep_of_one_rate_is_refused(tmp_path):
    path = _study(tmp_path, lr_sweep_widen=1)
    study = yaml.safe_load(path.read_text())
    study["scaling"]["lr_sweep"] = [1e-3]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="widening needs at least 2 rates"):
        plan(path)


def test_the_dry_run_says_the_most_that_widening_could_add(tmp_path):
    """Each size not yet chosen may add lr_sweep_widen runs as long as its first sweep run; a size already
    chosen adds none, and one widened once already has one fewer left."""
    from distill.report.lr_sweep import dry_run_lines
    from distill.report.study import load_study

    path = _study(tmp_path, lr_sweep_widen=2)
    rows = [{"run": j.run_dir.name, "hours_here": (0.5 if j.variant.startswith("lrsweep_a") else 0.25) if j.sweep_of
             else 9.0} for j in plan(path)]
    line = dry_run_lines(load_study(path).scaling, tmp_path / "out" / "s", rows)[-1]
    assert "up to 4 more sweep runs, 1.500 h at most, not in the total above" in line  # 2 x 0.5 + 2 x 0.25
    folder = tmp_path / "out" / "s"
    folder.mkdir(parents=True)
    (folder / "lrs.json").write_text(json.dumps({"a": {"chosen": 1e-3}, "b": {"widened": [4e-3]}}))
    line = dry_run_lines(load_study(path).scaling, folder, rows)[-1]
    assert "up to 1 more sweep run, 0.250 h at most" in line
    assert not any("widening" in x for x in dry_run_lines(load_study(_study(tmp_path)).scaling, folder, rows))


def test_a_method_swept_on_itself_runs_at_its_own_best_rate_and_declares_it(tmp_path, monkeypatch):
    """With lr_sweep_methods [plain, kd], each size is swept twice, plain's rate into lrs.json's `<size>`
    and KD's into `<size>/kd`; every KD run takes KD's choice and declares train.lr against its plain
    baseline, every plain run plain's. The held-out size's KD sweep runs after the prediction too."""
    best = {("plain", "a"): 1e-3, ("kd", "a"): 2e-3, ("plain", "b"): 1e-3, ("kd", "b"): 5e-4}
    order, predicted = [], []

    def train(cmd):
        name, folder, lr = _setting(cmd, "name"), _setting(cmd, "output_dir"), float(_setting(cmd, "train.lr"))
        method = "kd" if "kd" in name else "plain"
        order.append((name, lr))
        top1 = 90.0 if name.startswith("teacher") else 80 - 10 * abs(math.log2(lr / best[method, name.split("_")[1]]))
        d = __import__("pathlib").Path(folder) / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"name": name, "final_top1": top1, "seed": 0}))
        return 0, None

    monkeypatch.setattr(study_mod, "run_passing_stops", train)
    _stub_reports(monkeypatch, predicted)
    path = _study(tmp_path, lr_sweep_methods=["plain", "kd"])
    spec = yaml.safe_load(path.read_text())
    spec["runs"] = {"teacher": {"recipe": str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml"), "seeds": [0]}}
    spec["scaling"]["methods"]["kd"] = {"recipe": str(ROOT / "recipes/fashion_mnist/kd_tiny.yaml"), "teacher": "teacher",
                                        "overrides": ["teacher.model=distill_vit_tiny", "distill.cache=false",
                                                     "data.label_smoothing=0.1"]}
    path.write_text(yaml.safe_dump(spec))
    study = study_mod.load_study(path)
    assert all(study.runs[v].declared_differences == (["train.lr"] if v.startswith("kd_") else [])
               for v in study.runs if not v.startswith(("lrsweep", "teacher")))
    held = [j.run_dir.name for j in plan(path) if j.holdout]
    assert "lrsweep_b_kd_lr0.0005_s0" in held and "lrsweep_a_kd_lr0.0005_s0" not in held
    assert run_study(path) == 0
    lrs = json.loads((tmp_path / "out" / "s" / "lrs.json").read_text())
    assert {k: v["chosen"] for k, v in lrs.items()} == {"a": 1e-3, "a/kd": 2e-3, "b": 1e-3, "b/kd": 5e-4}
    ladder = [(n, lr) for n, lr in order if n.startswith(("plain_", "kd_"))]
    assert len(ladder) == 16 and all(lr == best[n.split("_")[0], n.split("_")[1]] for n, lr in ladder), ladder
    with pytest.raises(ConfigError, match="lr_sweep_methods=\\['kd', 'dkd'\\] must name distinct methods"):
        spec["scaling"]["lr_sweep_methods"] = ["kd", "dkd"]
        path.write_text(yaml.safe_dump(spec))
        plan(path)
