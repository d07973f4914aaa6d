"""Real training runs on Fashion-MNIST subsets, through the CLI's `main` as a user runs them (in this
process: a fresh interpreter adds ~6 s of imports a run and checks nothing more here)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import QUICK, needs_fmnist, run_main

pytestmark = [needs_fmnist, pytest.mark.slow]  # real training runs: the full tier only

WELL_ABOVE_CHANCE = 35.0  # 10 classes; 256 steps of a ViT from scratch reach about 48%


def train(out: Path, recipe: str, *overrides):
    res = run_main("train", f"recipes/fashion_mnist/{recipe}.yaml", f"output_dir={out}", *QUICK, *overrides)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train(out, "teacher_resnet18", "data.train_subset=2048", "train.epochs=1", "student.model=resnet10t",
          "student.small_input_stem=false",  # timm's stride-4 stem: a quarter of the pixels, the same test
          "train.ema=true", "train.ema_decay=0.9", "train.grad_accum_steps=2")
    return out / "fashion_mnist_teacher_resnet18"


def test_plain_run_learns_and_writes_its_folder(plain_run):
    summary = json.loads((plain_run / "summary.json").read_text())
    for key in ("name", "best_top1", "final_top1", "epochs", "params", "world_size", "wall_s",
                "train_img_per_s", "teacher", "distill_type", "git_commit", "torch"):
        assert key in summary, key
    assert summary["final_top1"] > WELL_ABOVE_CHANCE, summary
    assert summary["teacher"] is None and summary["distill_type"] == "none" and summary["world_size"] == 1
    assert 3.1e6 < summary["params"] < 3.3e6
    lines = [json.loads(x) for x in (plain_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for key in ("loss", "loss_base", "lr", "top1", "top5", "train_img_per_s", "epoch_s"):
        assert key in lines[-1], key
    assert lines[-1]["top1"] == summary["final_top1"]
    assert (plain_run / "config.yaml").exists() and (plain_run / "student.safetensors").exists()
    assert list((plain_run / "checkpoints").glob("step_*"))


def test_eval_reproduces_final_top1(plain_run):
    res = run_main("eval", plain_run)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    summary = json.loads((plain_run / "summary.json").read_text())
    assert abs(out["top1"] - summary["final_top1"]) < 1e-9 and out["eval_samples"] == 1999


def test_tensorboard_holds_every_loss_term(plain_run, teacher_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tags(run_dir):
        acc = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent))
        acc.Reload()
        return set(acc.Tags()["scalars"])

    plain = tags(plain_run)
    assert {"train/loss", "train/loss_base", "train/lr_epoch", "eval/top1", "eval/top5",
            "train/img_per_s_epoch"} <= plain
    train(tmp_path, "hard_tiny", f"teacher.checkpoint={teacher_run}", "teacher.model=resnet10t", "train.epochs=1",
          "teacher.small_input_stem=false",
          "data.train_subset=1024")  # the tags are the test: 32 steps write them all
    distilled = tags(tmp_path / "fashion_mnist_hard_tiny")
    assert {"train/loss", "train/loss_base", "train/loss_distill", "eval/top1_cls", "eval/top1_dist"} <= distilled
    summary = json.loads((tmp_path / "fashion_mnist_hard_tiny" / "summary.json").read_text())
    assert summary["teacher"] == "resnet10t" and summary["distill_type"] == "hard"
    assert 0 <= summary["teacher_agreement"] <= 100


def test_existing_run_is_never_overwritten(plain_run):
    before = {p: p.stat().st_mtime_ns for p in plain_run.rglob("*") if p.is_file()}
    res = run_main("train", "recipes/fashion_mnist/plain_tiny.yaml", f"output_dir={plain_run.parent}", *QUICK)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: run folder") and len(res.stderr.strip().splitlines()) == 1
    assert before == {p: p.stat().st_mtime_ns for p in plain_run.rglob("*") if p.is_file()}


def test_ema_and_gradient_accumulation(teacher_run):
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["global_batch"] == 64 and summary["lr"] == pytest.approx(1e-3 * 64 / 32)  # 32 x 2 steps
    assert "ema_top1" in summary and (teacher_run / "student_ema.safetensors").exists()
    last = [json.loads(x) for x in (teacher_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0 <= last["ema_top1"] <= 100
    ema, raw = (load_file(str(teacher_run / f)) for f in ("student_ema.safetensors", "student.safetensors"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in raw)  # a real average


def test_feature_distillation_trains_checkpoints_and_resumes_its_projection(teacher_run, tmp_path):
    """The projection is a trained weight of the run: in the checkpoint, changed by training, not in the
    exported student, and restored on resume (resumed from epoch 1, the run ends with the same weights)."""
    t = [f"teacher.checkpoint={teacher_run}", "teacher.model=resnet10t", "teacher.small_input_stem=false",
         "data.train_subset=1024",
         "student.embed_dim=128", "student.depth=2", "student.num_heads=2"]  # a narrow student: quicker, same test
    train(tmp_path, "feature_tiny", *t)
    run = tmp_path / "fashion_mnist_feature_tiny"
    assert json.loads((run / "summary.json").read_text())["final_top1"] > 20.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss_distill"] > 0 for m in metrics)
    first, last = sorted((run / "checkpoints").iterdir())  # after epochs 1 and 2
    proj = [load_file(str(c / "model.safetensors"))["projection.weight"] for c in (first, last)]
    assert proj[0].shape == (512, 128)  # resnet10t's last stage <- the student's width
    assert not torch.equal(proj[0], proj[1]), "the projection trains"
    assert not any(k.startswith("projection") for k in load_file(str(run / "student.safetensors")))

    resumed = tmp_path / "resumed" / run.name
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / last.name)
    (resumed / "summary.json").unlink()
    res = run_main("train", "recipes/fashion_mnist/feature_tiny.yaml", f"output_dir={resumed.parent}", *QUICK, *t,
                   "train.resume=auto")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {resumed / 'checkpoints' / first.name}" in res.stdout + res.stderr
    a, b = load_file(str(run / "student.safetensors")), load_file(str(resumed / "student.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
