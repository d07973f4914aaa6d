"""Unique images as an axis: cells run again on a larger subset at the same budgets in FLOPs (fewer
epochs of more images), each its own method in the fit, compared with the study's subset in the same
(params, images) cell; checked by hand without training."""
import json

import pytest
import yaml

from conftest import ROOT
from distill.errors import ConfigError
from distill.report.compare import load_runs
from distill.report.fit_claims import gains
from distill.report.scaling import fit_table, ladder_rows
from distill.report.study import load_study, plan

W64 = 1.081088e7  # w64d2's training FLOPs per image (estimate.size_shape, as tests/test_ladder.py checks it)


def _study(tmp_path, sizes=("a",)):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
        "overrides": ["data.train_subset=5000", "train.cooldown=0.25"],
        "scaling": {"sizes": {"a": ["student.embed_dim=64", "student.depth=2", "student.num_heads=2"],
                              "b": ["student.embed_dim=96", "student.depth=3", "student.num_heads=3"]},
                    "budgets": [16 * W64 * 4992, 4 * W64 * 4992],  # a: 16 and 4 epochs of 4,992 images
                    "methods": {"plain": {"recipe": str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")}},
                    "data_axis": {"train_subset": 20000, "sizes": list(sizes)}}}))
    return path


def test_a_larger_subset_trains_the_same_budgets_as_fewer_epochs_of_more_images(tmp_path):
    jobs = {j.run_dir.name: dict(s.split("=", 1) for s in j.settings) for j in plan(_study(tmp_path))}
    # 20,000 images (156 batches of 128: 19,968 an epoch) are 4 epochs and 1 of the same FLOPs
    long, short = jobs["plain-u20000_a_e4_s0"], jobs["plain-u20000_a_e1_s1"]
    assert long["data.train_subset"] == short["data.train_subset"] == "20000"
    assert (long["train.schedule"], long["train.resume"]) == ("wsd", "auto")
    assert short["train.resume"] == "auto"  # 1 epoch cools down inside its first: from scratch
    assert jobs["plain_a_e16_s0"]["data.train_subset"] == "5000" and not any("-u20000_b" in n for n in jobs)
    with pytest.raises(ConfigError, match="not the held-out b"):
        load_study(_study(tmp_path, ("b",)))


def _run(folder, name, seed, subset, images, top1):
    d = folder / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "data": {"name": "fashion_mnist",
                                                                          "train_subset": subset}}))
    (d / "summary.json").write_text(json.dumps({"name": name, "seed": seed, "params": 106058, "images": images,
                                                "flops": W64 * images, "final_top1": top1}))
    return d


def test_the_fit_sees_unique_images_as_their_own_method_paired_with_repetition(tmp_path):
    sc = load_study(_study(tmp_path)).scaling
    folder = tmp_path / "out/s"
    dirs = [_run(folder, f"plain_a_e16_s{s}", s, 5000, 16 * 4992, t) for s, t in ((0, 80.0), (1, 81.0))]
    dirs += [_run(folder, f"plain-u20000_a_e4_s{s}", s, 20000, 4 * 19968, t) for s, t in ((0, 82.0), (1, 83.5))]
    runs = load_runs(dirs)
    table = fit_table(ladder_rows(runs, sc), runs, sc)
    by = {(r["method"], r["seed"]): r for r in table}
    assert by["plain-u20000", 0]["unique_images"] == 20000 and by["plain", 0]["unique_images"] == 5000
    assert by["plain-u20000", 0]["baseline"] == "plain" and by["plain-u20000", 0]["images"] == by["plain", 0]["images"]
    (gain,) = gains(table, {"plain-u20000": "plain"})
    assert gain["gain"] == pytest.approx(2.25) and gain["seeds"] == [0, 1]  # (2.0 + 2.5) / 2 at equal compute


def test_with_kd_swept_on_itself_a_kd_cell_on_more_images_takes_kds_rate(tmp_path):
    """scaling.lr_sweep_methods [plain, kd]: the data axis's KD cells wait for `<size>/kd`, its plain
    cells for the size's (plain's) rate; both runs of a cell under budgets (long run and fork) alike."""
    path = _study(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["runs"] = {"t": {"recipe": str(ROOT / "recipes/fashion_mnist/teacher_resnet18.yaml"), "seeds": [0]}}
    spec["scaling"]["methods"]["kd"] = {"recipe": str(ROOT / "recipes/fashion_mnist/kd_tiny.yaml"), "teacher": "t",
                                        "overrides": ["teacher.model=resnet18", "data.label_smoothing=0.1"]}
    spec["scaling"].update(lr_sweep=[1e-3, 2e-3], lr_sweep_methods=["plain", "kd"])
    path.write_text(yaml.safe_dump(spec))
    waits = {j.variant: j.waits_for_lr for j in plan(path)}
    assert {waits[v] for v in waits if v.startswith("kd-u20000_a_")} == {"a/kd"}
    assert {waits[v] for v in waits if v.startswith("plain-u20000_a_")} == {"a"}
    assert waits["kd_a_e4"] == "a/kd" and "lrsweep_a_kd_lr0.002" in waits
