"""The teacher axis of a scaling study: KD from each teacher at the listed sizes (the method's own
teacher's cell is its ladder run), and the report's per-size verdict on whether a stronger teacher
hurt, paired by seed, checked by hand on fake run folders."""
import json

import pytest
import yaml

from conftest import ROOT
from distill.errors import ConfigError
from distill.report import teacher_axis
from distill.report.study import load_study, plan

FM = ROOT / "recipes/fashion_mnist"
T975_2 = 4.302652730  # t quantile, 2 degrees of freedom (any t-table)


def _study(tmp_path, sizes=("a",)):
    path = tmp_path / "s.yaml"
    teacher = {"recipe": str(FM / "teacher_resnet18.yaml"), "seeds": [0]}
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path / "out"), "seeds": [0, 1, 2],
        "runs": {"t_small": teacher, "t_mid": teacher, "t_big": teacher},
        "scaling": {"sizes": {"a": ["student.embed_dim=64", "student.depth=2", "student.num_heads=2"],
                              "b": ["student.embed_dim=96", "student.depth=2", "student.num_heads=3"],
                              "c": ["student.embed_dim=128", "student.depth=2", "student.num_heads=4"]},
                    "epochs": [1, 2], "holdout": "c",
                    "methods": {"plain": {"recipe": str(FM / "plain_tiny.yaml")},
                                "kd": {"recipe": str(FM / "kd_tiny.yaml"), "teacher": "t_big",
                                       "overrides": ["teacher.model=resnet18", "data.label_smoothing=0.1"]}},
                    "teacher_axis": {"method": "kd", "sizes": list(sizes),
                                     "teachers": {"t_small": ["teacher.model=resnet10t"], "t_mid": [], "t_big": []}}}}))
    return path


def test_kd_runs_from_each_teacher_at_the_largest_budget_of_each_listed_size(tmp_path):
    jobs = plan(_study(tmp_path, ("a", "b")))
    axis = {j.run_dir.name: j for j in jobs if "_by_" in j.variant}
    assert sorted(axis) == sorted(f"kd_{s}_e2_by_{t}_s{i}" for s in "ab" for t in ("t_small", "t_mid") for i in range(3))
    small = axis["kd_a_e2_by_t_small_s1"]
    assert small.needs == tmp_path / "out/s/t_small_s0" and not small.holdout
    assert f"teacher.checkpoint={tmp_path / 'out/s/t_small_s0'}" in small.settings
    assert small.settings.index("teacher.model=resnet10t") > small.settings.index("teacher.model=resnet18")
    assert "train.epochs=2" in small.settings
    held = {j.run_dir.name: j for j in plan(_study(tmp_path, ("a", "c"))) if "_by_" in j.variant and "_c_" in j.variant}
    assert len(held) == 6 and all(j.holdout for j in held.values())  # the held-out size's: after the prediction


def _summary(folder, name, top1):
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps({"name": name, "final_top1": top1}))


def test_the_report_says_per_size_whether_a_stronger_teacher_hurt(tmp_path):
    sc = load_study(_study(tmp_path)).scaling
    folder, out = tmp_path / "out/s", tmp_path / "report"
    out.mkdir()
    for t, top1 in (("t_small", 80.0), ("t_mid", 85.0), ("t_big", 90.0)):
        _summary(folder, f"{t}_s0", top1)
    students = {"kd_a_e2_by_t_small": [70.0, 71.0, 72.0], "kd_a_e2_by_t_mid": [72.0, 73.0, 74.0],
                "kd_a_e2": [71.0, 72.1, 73.0]}  # t_big, kd's own teacher: its ladder runs
    for variant, tops in students.items():
        for seed, top1 in enumerate(tops):
            _summary(folder, f"{variant}_s{seed}", top1)
    teacher_axis.write(sc, folder, [0, 1, 2], out)
    pairs = {(c["weaker"], c["stronger"]): c for c in json.loads((out / "teacher_axis.json").read_text())["comparisons"]}
    # big - mid per seed: -1.0, -0.9, -1.0: mean -0.9667, sd sqrt(1/300), half = t * sd / sqrt(3)
    big_mid = pairs["t_mid", "t_big"]
    assert big_mid["diff"] == pytest.approx(-29 / 30) and big_mid["half_width"] == pytest.approx(T975_2 * 0.1 / 3)
    assert big_mid["hurt"] == "yes"
    assert (pairs["t_small", "t_mid"]["diff"], pairs["t_small", "t_mid"]["hurt"]) == (pytest.approx(2.0), "no")
    assert pairs["t_small", "t_big"]["hurt"] == "no" and len(pairs) == 3
    text = (out / "report.md").read_text()
    assert "| a | t_mid | t_big | -0.97 ± 0.14 | 3 | yes |" in text
    assert (out / "teacher_axis.png").stat().st_size > 1000


def test_a_method_runs_only_at_its_sizes_which_hold_the_held_out_one(tmp_path):
    """scaling.methods.<m>.sizes: KD at a subset of the ladder (where its teacher's cost is bearable)."""
    path = _study(tmp_path, ("b",))
    study = yaml.safe_load(path.read_text())
    study["scaling"]["methods"]["kd"]["sizes"] = ["b", "c"]
    path.write_text(yaml.safe_dump(study))
    variants = {j.variant for j in plan(path)}
    assert {"plain_a_e1", "kd_b_e1", "kd_c_e2", "kd_b_e2_by_t_small"} <= variants
    assert not any(v.startswith("kd_a") for v in variants)
    study["scaling"]["teacher_axis"]["sizes"] = ["a"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="sizes its method runs at"):
        load_study(path)
    study["scaling"]["methods"]["kd"]["sizes"] = ["a", "b"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="hold the held-out c"):
        load_study(path)


def test_with_kd_swept_on_itself_the_axis_runs_wait_for_kds_rate_not_plains(tmp_path):
    """scaling.lr_sweep_methods [plain, kd]: a teacher-axis run is a KD run of its size, so it takes
    `<size>/kd` from lrs.json, and declares train.lr against its plain baseline as KD's ladder runs do."""
    path = _study(tmp_path, ("a", "b"))
    spec = yaml.safe_load(path.read_text())
    spec["scaling"].update(lr_sweep=[1e-3, 2e-3], lr_sweep_methods=["plain", "kd"])
    path.write_text(yaml.safe_dump(spec))
    study = load_study(path)
    waits = {j.variant: j.waits_for_lr for j in plan(path) if not j.variant.startswith(("lrsweep", "t_"))}
    assert waits["kd_a_e2_by_t_small"] == waits["kd_a_e1"] == "a/kd" and waits["plain_a_e1"] == "a"
    assert study.runs["kd_b_e2_by_t_mid"].declared_differences == ["train.lr"]
    assert "train.lr" not in study.runs["plain_b_e2"].declared_differences
