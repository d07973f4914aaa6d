import json
import math
from pathlib import Path

import pytest

from conftest import ROOT
from distill import stats
from distill.compare import load_runs, variant_rows, write_report
from distill.study import load_study, plan, run_study


def test_mean_std_and_intervals_by_hand():
    xs = [70.0, 72.0, 74.0]
    assert stats.mean(xs) == 72.0
    assert stats.std(xs) == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    m, half = stats.mean_ci(xs)
    assert (m, half) == (72.0, pytest.approx(4.303 * 2.0 / math.sqrt(3)))  # t_{0.975, 2} = 4.303
    a, b = [80.0, 82.0, 84.0], [70.0, 72.0, 74.0]
    d, half = stats.diff_ci(a, b)
    # Welch: se = sqrt(4/3 + 4/3); df = (8/3)^2 / ((4/3)^2/2 * 2) = 4 -> t = 2.776
    assert d == 10.0 and half == pytest.approx(2.776 * math.sqrt(8 / 3))
    assert stats.std([5.0]) == 0.0 and stats.mean_ci([5.0])[1] == math.inf
    assert stats.t975(7.9) == 2.365 and stats.t975(1000) == 1.960


def fake_run(folder: Path, name: str, final: float, student="distill_vit_tiny", distill="none", teacher=None):
    d = folder / name
    d.mkdir(parents=True)
    summary = {"name": name, "best_top1": final + 1, "final_top1": final, "params": 3.2e6, "gflops": 0.108,
               "train_img_per_s": 390.0, "wall_s": 100.0, "student": student, "distill_type": distill,
               "teacher": teacher, "seed": 0, "world_size": 1, "git_commit": "abc", "torch": "2", "timm": "1",
               "accelerate": "1", "hardware": "cpu"}
    if distill != "none":
        summary["teacher_agreement"] = 90.0
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "top1": final - 2 + e}) + "\n" for e in range(3)))
    return d


def test_report_groups_seeds_and_compares_with_plain(tmp_path):
    dirs = [fake_run(tmp_path, f"plain_s{s}", v) for s, v in enumerate([70.0, 72.0, 74.0])]
    dirs += [fake_run(tmp_path, f"hard_s{s}", v, distill="hard", teacher="resnet18") for s, v in enumerate([80, 82, 84])]
    rows = {r["variant"]: r for r in variant_rows(__import__("distill.compare").compare.group(load_runs(dirs)))}
    assert rows["plain"]["n"] == 3 and rows["plain"]["final_mean"] == 72.0 and rows["plain"]["final_std"] == 2.0
    assert rows["hard"]["baseline"] == "plain" and rows["hard"]["delta"] == 10.0
    assert rows["hard"]["delta_ci"] == pytest.approx(2.776 * math.sqrt(8 / 3))
    report = write_report(load_runs(dirs), tmp_path / "report")
    text = report.read_text()
    assert "+10.00 ± 4.53" in text and "72.00 ± 2.00" in text
    for png in ("top1_per_epoch.png", "plain_vs_distilled.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


def write_study(tmp_path: Path, runs: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path}/out\nseeds: [0, 1]\nruns:\n{runs}")
    return path


def test_completed_runs_are_skipped(tmp_path, capsys):
    recipe = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
    path = write_study(tmp_path, f"  plain:\n    recipe: {recipe}\n")
    for seed, v in [(0, 70.0), (1, 72.0)]:
        fake_run(tmp_path / "out" / "s", f"plain_s{seed}", v)
    assert run_study(path) == 0  # nothing to train: a launched run would fail on the fake folders
    out = capsys.readouterr().out
    assert out.count("complete (skipped)") == 2 and (tmp_path / "out" / "s" / "report" / "report.md").exists()


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    recipe = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
    bad = ROOT / "recipes/fashion_mnist/hard_tiny.yaml"
    path = write_study(tmp_path, f"  teacher:\n    recipe: {recipe}\n    seeds: [0]\n"
                                 f"    overrides: [data.name=cifar10, data.root={tmp_path}/none, data.download=false]\n"
                                 f"  hard:\n    recipe: {bad}\n    teacher: teacher\n"
                                 f"  plain:\n    recipe: {recipe}\n")
    for seed in (0, 1):
        fake_run(tmp_path / "out" / "s", f"plain_s{seed}", 70.0)
    assert run_study(path) == 1
    captured = capsys.readouterr()
    assert "teacher seed 0: FAILED (exit 2)" in captured.out
    assert captured.out.count("its teacher teacher_s0 is not complete") == 2
    assert "plain seed 1: complete (skipped)" in captured.out  # the others still went on


def test_plan_wires_teacher_seeds_and_overrides(tmp_path):
    jobs = plan(ROOT / "recipes/studies/fashion_mnist_cpu.yaml", ["train.epochs=1"])
    names = [j.run_dir.name for j in jobs]
    assert names == ["teacher_s0", "plain_tiny_s0", "plain_tiny_s1", "plain_tiny_s2",
                     "hard_tiny_s0", "hard_tiny_s1", "hard_tiny_s2"]
    hard = jobs[4]
    assert f"teacher.checkpoint={jobs[0].run_dir}" in hard.cmd and "seed=0" in hard.cmd
    assert hard.cmd.index("train.epochs=1") > hard.cmd.index("train.epochs=3")  # the command line wins


@pytest.mark.parametrize("study", sorted((ROOT / "recipes/studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_loads(study):
    assert load_study(study).runs and plan(study)
