"""Scaling studies: the ladder's plan, the prediction made once and before the held-out rung runs, the
fits of a study's runs; every rung of the GPU ladders trains a few steps. Compute and the dry run: test_flop_count.py."""
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, needs_fmnist
from distill.cli import main
from distill.recipe import load_config
from distill.report.compare import load_runs
from distill.report.scaling import check_prediction, ladder_rows, predict_holdout, predictions_sha256
from distill.report.study import load_study, plan
from distill.models import build_student

CPU_STUDY = ROOT / "recipes/studies/scaling_cpu.yaml"


def test_the_cpu_ladder_plans_every_cell_and_the_held_out_rung_last():
    jobs = plan(CPU_STUDY)
    study = load_study(CPU_STUDY)
    sc = study.scaling
    assert len(jobs) == 1 + len(sc.sizes) * len(sc.epochs) * len(sc.methods) * len(study.seeds)
    held = [j for j in jobs if j.holdout]
    assert {j.variant.split("_")[1] for j in held} == {"w160d4"} and jobs[-len(held):] == held
    kd = next(j for j in jobs if j.variant == "kd_w64d2_e16")
    assert "train.epochs=16" in kd.settings and "student.embed_dim=64" in kd.settings
    assert kd.needs is not None and kd.needs.name == "teacher_s0"
    sizes = {}
    for j in jobs[1:]:
        sizes.setdefault(j.variant.split("_")[1], j)
    counts = []
    for size, job in sizes.items():
        cfg = load_config(job.recipe, job.settings)
        counts.append(sum(p.numel() for p in build_student(cfg.student, 10, 1, 32).parameters()))
    assert counts == sorted(counts) and counts[-1] / counts[0] >= 10  # at least 10x in parameters


def _fake_run(folder: Path, name: str, seed: int, params: int, images: int, top1: float):
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: %d\n" % seed)
    (run / "summary.json").write_text(json.dumps({
        "name": name, "seed": seed, "params": params, "flops": 3e3 * params * images, "images": images,
        "final_top1": top1, "best_top1": top1, "test_loss": 1 - top1 / 100, "teacher_flops": 0.0,
        "logit_cache": None, "train_img_per_s": 1.0, "wall_s": 1.0, "epochs": 1, "epoch_images": images}))


@pytest.mark.slow  # fits the ladder's laws, every grid start in each fold: ~8 s (AVX2)
@needs_fmnist
def test_the_prediction_is_made_once_from_the_other_rungs_then_checked(tmp_path, monkeypatch):
    """Runs that follow a known joint law exactly: the prediction for the held-out rung is the law's
    value there; a second call keeps the first prediction; measured runs made after it are compared."""
    from distill.report import scaling

    monkeypatch.setattr(scaling, "BOOTSTRAP", 10)
    study_file = tmp_path / "s.yaml"
    study = yaml.safe_load(CPU_STUDY.read_text())
    study.update(output_dir=str(tmp_path / "runs"))
    study["runs"]["teacher"]["recipe"] = str(ROOT / "recipes/fashion_mnist/teacher_resnet18.yaml")
    for m in study["scaling"]["methods"].values():
        m["recipe"] = str(ROOT / "recipes/fashion_mnist" / Path(m["recipe"]).name)
    study["scaling"]["forms"] = {"plain": "chinchilla", "kd": "chinchilla"}  # three fitted sizes: declared, the runs' law
    study_file.write_text(yaml.safe_dump(study))
    sc, jobs = load_study(study_file).scaling, plan(study_file)
    folder = jobs[0].run_dir.parent
    n = {"w64d2": 106058, "w96d3": 344650, "w128d4": 805258}
    images = {4: 19968, 8: 39936, 16: 79872}

    def law(params, imgs, method):  # error = e + A N^-alpha + B D^-beta, kd's floor lower
        return (0.06 if method == "kd" else 0.08) + 4.0 * params ** -0.3 + 30.0 * imgs ** -0.45

    for j in jobs:
        if j.holdout or j.variant == "teacher":
            continue
        method, size, e = j.variant.split("_")
        _fake_run(folder, j.run_dir.name, j.seed, n[size], images[int(e[1:])], 100 * (1 - law(n[size], images[int(e[1:])], method)))
    path = predict_holdout(folder, [j for j in jobs if not j.holdout], sc, [j for j in jobs if j.holdout])
    pred = json.loads(path.read_text())
    held_params = pred["holdout_params"]
    assert 1.2e6 < held_params < 1.3e6
    for p in pred["predictions"]:
        truth = 100 * (1 - law(held_params, p["images"], p["method"]))
        assert abs(p["predicted_top1"] - truth) < 0.05 and p["low"] <= p["predicted_top1"] <= p["high"]
    assert len(pred["predictions"]) == len(sc.methods) * len(sc.epochs)
    for p in pred["predictions"]:  # the declared form, fits.json's fields
        assert p["form"] == pred["law"][p["method"]] == "chinchilla" and pred["fits"][p["method"]]["declared"]
        assert {"persistence_top1", "loglinear_top1", "flops"} <= set(p) and p["measured_top1"] is None
    assert pred["sha256"] == predictions_sha256(pred["predictions"])
    # its power, stated before any held-out run: runs that follow the law exactly leave a right law no error
    assert pred["power"]["all"] == {"cells": len(pred["predictions"]), "goal": 1.0,
                                    "expected_mae": pytest.approx(0, abs=0.05), "p_within_goal": 1.0}
    time.sleep(1.1)
    assert predict_holdout(folder, [], sc, []).read_text() == path.read_text()  # kept, not made again
    for j in (j for j in jobs if j.holdout):
        method, size, e = j.variant.split("_")
        _fake_run(folder, j.run_dir.name, j.seed, held_params, images[int(e[1:])], 90.0)
    rows = ladder_rows(load_runs([j.run_dir for j in jobs if j.variant != "teacher"]), sc)
    checked = check_prediction(folder, rows)
    assert all(p["measured_top1"] == 90.0 and p["made_before_runs"] for p in checked["predictions"])
    assert checked["sha256_matches"] and all(p["seeds"] == 2 for p in checked["predictions"])
    assert all(abs(p["error_points"] - (p["predicted_top1"] - 90.0)) < 1e-9 for p in checked["predictions"])


@pytest.mark.slow  # fits a 4-size table twice: ~10 s each (AVX2)
@needs_fmnist
@pytest.mark.parametrize("cut", [False, True], ids=["every_run", "fit_max_epochs"])
def test_a_ladder_extended_fits_its_prior_runs_and_locks_them(tmp_path, monkeypatch, capsys, cut):
    """`scaling.prior_runs`: an earlier study's runs.jsonl fitted with the study's own (here it has none but
    the held-out rung): the prediction is the law's value at the new size, the lock names the prior runs,
    the verdict counts them; a table holding the held-out size is refused before anything runs. With
    `scaling.fit_max_epochs` 16, the prediction's laws leave out prior runs of 64 epochs that scored as at 16
    (repetition's plateau), which would bend them."""
    from distill.report import estimate, preregister, scaling

    monkeypatch.setattr(scaling, "BOOTSTRAP", 10)
    monkeypatch.setattr(estimate, "_seconds_per_image", lambda *a, **k: 1e-3)  # the dry run's hours are not the test
    n = {"w64d2": 106058, "w96d3": 344650, "w128d4": 805258}
    images = {4: 19968, 8: 39936, 16: 79872}

    def law(params, imgs, method):
        return (0.06 if method == "kd" else 0.08) + 4.0 * params ** -0.3 + 30.0 * imgs ** -0.45

    prior = [{"run": f"{m}_{size}_e{e}_s{seed}", "method": m, "size": size, "params": n[size], "images": d,
              "flops": 3e3 * n[size] * d, "seed": seed, "top1": 100 * (1 - law(n[size], d, m)),
              "finished_at": "2026-01-01T00:00:00+00:00", "holdout": size == "w128d4",  # held out there, fitted here
              "unique_images": 4992}
             for m in ("plain", "kd") for size in n for e, d in images.items() for seed in (0, 1)]
    if cut:
        prior += [{**r, "run": r["run"].replace("_e16_", "_e64_"), "images": 4 * r["images"], "flops": 4 * r["flops"]}
                  for r in prior if "_e16_" in r["run"]]
    runs = len(prior)
    (tmp_path / "prior.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prior))
    study = yaml.safe_load(CPU_STUDY.read_text())
    study.update(output_dir=str(tmp_path / "runs"))
    study["runs"]["teacher"]["recipe"] = str(ROOT / "recipes/fashion_mnist/teacher_resnet18.yaml")
    for m in study["scaling"]["methods"].values():
        m["recipe"] = str(ROOT / "recipes/fashion_mnist" / Path(m["recipe"]).name)
    study["scaling"]["sizes"] = {"w160d4": study["scaling"]["sizes"]["w160d4"]}
    study["scaling"]["prior_runs"] = "prior.jsonl"  # relative to the study file
    study["scaling"]["fit_max_epochs"] = 16 if cut else None
    study["scaling"]["forms"] = {"plain": "chinchilla", "kd": "chinchilla"}  # three fitted sizes: declared
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    assert f"fitted with the study's own runs: {runs} prior runs of 3 sizes" in capsys.readouterr().out
    sc, jobs = load_study(tmp_path / "s.yaml").scaling, plan(tmp_path / "s.yaml")
    folder = jobs[0].run_dir.parent
    held = [j for j in jobs if j.holdout]
    assert len(held) == len(jobs) - 1  # all but the teacher
    pred = json.loads(predict_holdout(folder, [j for j in jobs if not j.holdout], sc, held).read_text())
    assert pred["fitted_on"] == runs and 1.2e6 < pred["holdout_params"] < 1.3e6
    assert pred.get("fit_max_epochs") == (16 if cut else None)
    assert [law["runs"] for law in pred["fits"].values()] == [18, 18]
    for p in pred["predictions"]:
        truth = 100 * (1 - law(pred["holdout_params"], p["images"], p["method"]))
        assert abs(p["predicted_top1"] - truth) < 0.05 and p["persistence_top1"] is not None
    locked = json.loads(preregister.lock(folder, [], sc.prior_runs).read_text())
    assert locked["prior_runs"]["runs"] == runs and locked["prior_runs"]["last_finished_at"].startswith("2026-01-01")
    time.sleep(1.1)
    for j in held:
        _fake_run(folder, j.run_dir.name, j.seed, pred["holdout_params"], 19968, 90.0)
        summary = json.loads((j.run_dir / "summary.json").read_text())
        (j.run_dir / "summary.json").write_text(json.dumps({**summary, "started_at": preregister.utc_now()}))
    line = preregister.verdict(folder, [j.run_dir for j in held])
    assert line.startswith("Pre-registration verified") and f"after its {runs} fitted runs finished" in line, line

    study["scaling"]["fit_max_epochs"] = 0.5
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "s.yaml"), "--dry-run"]) == 2
    assert "scaling.fit_max_epochs 0.5: a run sees its images at least once" in capsys.readouterr().err
    study["scaling"]["fit_max_epochs"] = 16 if cut else None
    study["scaling"]["forms"] = {"plain": "chinchilla", "kd": "chinchilla"}  # three fitted sizes: declared
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    prior[0]["size"] = "w160d4"
    (tmp_path / "prior.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prior))
    assert main(["study", str(tmp_path / "s.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study ") and "runs of the held-out size w160d4" in err and "\n" not in err


LADDERS = [("scaling_cifar10.yaml", ["data.img_size=32"]),
           ("scaling_imagenet.yaml", ["data.img_size=224", "data.crop=pad", "data.auto_augment=null", "data.reprob=0",
                                      "data.aug_repeats=1", "data.in_memory=null", "data.mean=null", "data.std=null"])]


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("study, data", LADDERS, ids=[s for s, _ in LADDERS])
def test_every_rung_of_the_gpu_ladders_trains_a_few_steps(study, data):
    """Each size up to Base, as its study builds it, takes a step on Fashion-MNIST at the ladder's
    resolution (no CIFAR or ImageNet here): finite losses, logits of the dataset's shape."""
    from distill.train.trainer import Loop

    jobs = [j for j in plan(ROOT / "recipes/studies" / study) if j.variant.startswith("plain_")]
    rungs = {j.variant.split("_")[1]: j for j in jobs}
    assert list(rungs) == ["tiny", "small", "medium", "base"]
    for size, job in rungs.items():
        cfg = load_config(job.recipe, [*job.settings, "data.name=fashion_mnist", *data, "data.train_subset=2",
                                       "data.test_subset=2", "data.batch_size=2", "data.num_workers=0",
                                       "train.mixed_precision=no", "data.mixup_alpha=0", "data.cutmix_alpha=0",
                                       "train.epochs=1", "train.warmup_epochs=0", "train.compile=false",
                                       f"output_dir={ROOT / 'runs' / 'never'}"])
        loop = Loop(cfg)
        terms, steps = loop.train_epoch(0)
        assert steps == 1 and all(torch.isfinite(torch.tensor(v)) for v in terms.values()), (size, terms)
        x = torch.zeros(1, 1, cfg.data.img_size, cfg.data.img_size)
        assert loop.run.student.eval()(x).shape == (1, 10), size


@pytest.mark.slow  # the study's fit and distill fit's, on the same runs: ~18 s (AVX2)
def test_the_studys_scaling_report_is_distill_fit_on_its_runs(tmp_path, monkeypatch):
    """write_scaling_report writes runs.jsonl and fits.json; `distill fit` on that runs.jsonl gives the
    same fits (one fitting code path), and the held-out rung is held out in both."""
    from distill.commands.fit import run_fit
    from distill.report import scaling
    from distill.report.study import Scaling, StudyRun

    monkeypatch.setattr(scaling, "BOOTSTRAP", 10)
    sc = Scaling(sizes={s: [] for s in ("a", "b", "c", "d", "e")}, epochs=[1, 2, 4],
                 methods={"plain": StudyRun(recipe="plain.yaml")}, holdout="e")
    n = {"a": 100_000, "b": 300_000, "c": 1_000_000, "d": 2_000_000, "e": 4_000_000}
    dirs = []
    for size in sc.sizes:
        for e in sc.epochs:
            for seed in (0, 1):
                err = (0.1 + 0.3 * (n[size] / 1e5) ** -0.4 + 0.5 * e ** -0.6) * (1 + 0.01 * (-1) ** (seed + e))
                name = f"plain_{size}_e{e}_s{seed}"
                _fake_run(tmp_path / "study", name, seed, n[size], 20_000 * e, 100 * (1 - err))
                dirs.append(tmp_path / "study" / name)
    out = tmp_path / "report"
    out.mkdir()
    path = scaling.write_scaling_report(load_runs(dirs), sc, tmp_path / "study", out)
    study = json.loads(path.read_text())
    table = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(table) == 30 and {r["params"] for r in table if r["holdout"]} == {4_000_000}
    alone = json.loads((run_fit(out / "runs.jsonl", tmp_path / "fit", bootstrap=10) / "fits.json").read_text())
    for key in ("laws", "predictions", "holdout_errors", "crossings", "gains"):
        assert study[key] == alone[key], key
    assert study["laws"]["plain"]["runs"] == 24 and len(study["predictions"]) == 3
    law = alone["laws"]["plain"]
    assert law["form"] in law["candidates"] and law["cv_error"] == min(v for v in law["candidates"].values() if v)
    assert all({"value", "low", "high", "on_bound"} <= set(p) for p in law["parameters"].values())
    assert all({"predicted_top1", "low", "high", "persistence_top1", "loglinear_top1", "measured_top1"} <= set(p)
               for p in alone["predictions"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "report", "study"]  # no temporary folder left
    assert "## Scaling fits" in (out / "report.md").read_text()


def test_a_predictions_sha256_survives_its_measurement_and_catches_an_edit(tmp_path):
    """prediction.json's sha256 covers what the law said, not the measurement filled in later: the report
    says whether it still matches, and an edited prediction does not."""
    preds = [{"run": "plain_big_e4", "method": "plain", "params": 4e6, "images": 2e4, "flops": 1e12,
              "predicted_top1": 80.0, "low": 78.0, "high": 82.0, "persistence_top1": 79.0, "loglinear_top1": 81.0,
              "measured_top1": None, "seeds": 0}]
    made = {"made_at": "2026-01-01T00:00:00+00:00", "sha256": predictions_sha256(preds), "holdout": "big",
            "holdout_params": 4_000_000, "law": {"plain": "hoffmann"}, "fitted_on": 12, "predictions": preds}
    (tmp_path / "prediction.json").write_text(json.dumps(made))
    _fake_run(tmp_path, "plain_big_e4_s0", 0, 4_000_000, 20_000, 80.5)
    rows = [{"run": "plain_big_e4_s0", "top1": 80.5}]
    checked = check_prediction(tmp_path, rows)
    assert checked["sha256_matches"] and checked["predictions"][0]["measured_top1"] == 80.5
    assert predictions_sha256(checked["predictions"]) == made["sha256"]  # measured, still the same hash
    preds[0]["predicted_top1"] = 80.4  # moved towards the measurement after the fact
    (tmp_path / "prediction.json").write_text(json.dumps(made))
    assert not check_prediction(tmp_path, rows)["sha256_matches"]
    from distill.report.scaling import _prediction

    assert "NO LONGER match" in "\n".join(_prediction(check_prediction(tmp_path, rows)))


def test_runs_jsonl_carries_teacher_dates_lr_and_unique_images_for_a_refit(tmp_path):
    """Each row of the study's runs.jsonl is `distill fit`'s row plus the run's teacher (its run folder),
    start and finish (UTC, from summary.json), train.lr as set and the unique training images."""
    from distill.report.run_table import check_table
    from distill.report.scaling import fit_table
    from distill.report.study import Scaling, StudyRun

    sc = Scaling(sizes={"a": [], "b": []}, epochs=[2], holdout="b",
                 methods={"plain": StudyRun(recipe="p.yaml"), "kd": StudyRun(recipe="k.yaml", teacher="teacher")})
    dirs = []
    for method in ("plain", "kd"):
        name = f"{method}_a_e2_s0"
        _fake_run(tmp_path, name, 0, 100_000, 10_000, 70.0)
        teacher = {"model": "resnet10t", "checkpoint": str(tmp_path / "teacher_s0")} if method == "kd" else {}
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(
            {"seed": 0, "data": {"name": "fashion_mnist", "train_subset": 5000}, "train": {"lr": 2e-3},
             "teacher": teacher}))
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary.update(started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:00+00:00", lr=2e-3,
                       teacher="resnet10t" if method == "kd" else None)
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
        dirs.append(tmp_path / name)
    _fake_run(tmp_path, "teacher_s0", 0, 5_000_000, 60_000, 90.0)
    runs = load_runs([*dirs, tmp_path / "teacher_s0"])
    table = fit_table(ladder_rows(runs, sc), runs, sc)
    by = {r["method"]: r for r in table}
    assert len(table) == 2 and by["kd"]["teacher"] == "teacher_s0" and by["plain"]["teacher"] is None
    assert by["kd"]["teacher_flops"] == 3e3 * 5_000_000 * 60_000  # the teacher run's training FLOPs
    for r in table:
        assert (r["lr"], r["unique_images"], r["images"]) == (2e-3, 5000, 10_000)
        assert (r["started_at"], r["finished_at"]) == ("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00")
    check_table([json.loads(json.dumps(r)) for r in table], "runs.jsonl")  # what `distill fit` reads back


def test_under_budgets_the_naive_baselines_compare_sizes_at_one_budget_not_one_image_count():
    """Budgets in FLOPs give each size its own images, so no two sizes share an image count: persistence
    (the largest fitted size) and the log-linear line are taken at the held-out cell's `budget` instead."""
    import numpy as np

    from distill.report.fit_claims import analyse

    rows = []
    for n in (1e4, 3e4, 1e5, 4e5):
        for b in (1e10, 3e10, 1e11):
            images = b / (100 * n)  # 100 FLOPs per parameter and image
            for seed in (0, 1):
                err = (0.1 + 2 * n ** -0.3 + 5 * images ** -0.3) * (1 + 0.01 * (-1) ** seed)
                rows.append({"method": "plain", "params": n, "images": images, "flops": b, "seed": seed,
                             "top1": 100 * (1 - err), "budget": b, "holdout": n == 4e5})
    result, _ = analyse(rows, bootstrap=10)
    for p in result["predictions"]:
        at = {n: np.mean([r["top1"] for r in rows if r["params"] == n and r["budget"] == p["flops"]])
              for n in (1e4, 3e4, 1e5)}
        assert p["persistence_top1"] == pytest.approx(at[1e5])
        slope, icept = np.polyfit(np.log(list(at)), list(at.values()), 1)
        assert p["loglinear_top1"] == pytest.approx(icept + slope * np.log(4e5))
    result, _ = analyse([{k: v for k, v in r.items() if k != "budget"} for r in rows], bootstrap=10)
    assert all(p["persistence_top1"] is None for p in result["predictions"])  # no size shares its images
