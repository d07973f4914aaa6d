"""`distill bench`: times the real step (a slowed step reads slower), writes its JSON, times cached distillation.
In this process (`run_bench`, or the CLI's `main`): a fresh interpreter would add ~6 s of imports a run."""
import json
import time

import pytest

import distill.train.step
from conftest import PLAIN, ROOT, needs_fmnist, run_main
from distill.commands.bench import run_bench
from distill.recipe import load_config

pytestmark = [needs_fmnist, pytest.mark.slow]  # real training runs: the full tier only

SMALL = ["data.train_subset=1024", "data.batch_size=32", "train.mixed_precision=no"]
STEPS = ["--steps", "4", "--warmup", "2"]


def test_bench_times_the_step_it_reports(monkeypatch):
    """The framework's step made 150 ms slower must read as at least 150 ms a step, in every round,
    while the yardsticks, which do not run it, stay faster; the figures are not just consistent."""
    original = distill.train.step.TrainStep.__call__

    def slow(self, *args, **kwargs):
        time.sleep(0.15)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(distill.train.step.TrainStep, "__call__", slow)
    result = run_bench(load_config(str(ROOT / PLAIN), SMALL), steps=4, warmup=2, rounds=2, reference=True)
    assert result["train_step_ms"] >= 150 and result["rounds"] == 2 and len(result["per_round"]) == 2
    per_step = [32 / r["train_img_per_s"] for r in result["per_round"]]
    assert min(per_step) >= 0.150, per_step
    assert result["ceiling_img_per_s"] > result["train_img_per_s"]
    assert result["reference_img_per_s"] > result["train_img_per_s"]


def test_bench_cached_distillation_records_then_replays(tmp_path):
    args = ["recipes/fashion_mnist/hard_tiny.yaml", *SMALL, "data.train_subset=512", "teacher.checkpoint=null",
            "teacher.model=resnet10t", "teacher.small_input_stem=false", "distill.cache=true",
            f"output_dir={tmp_path}", *STEPS]
    res = run_main("bench", *args, "--out", tmp_path / "cached.json")
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "cached.json").read_text())
    assert result["teacher_cached"] and "teacher_share" not in result  # the teacher did not run in the timed steps
    assert len(list((tmp_path / "logit_cache").rglob("epoch_0001_rank0of1.safetensors"))) == 1


def test_bench_rejects_bad_rounds():
    res = run_main("bench", PLAIN, *SMALL, *STEPS, "--rounds", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--rounds" in res.stderr


def test_bench_reference_needs_a_plain_recipe():
    res = run_main("bench", "recipes/fashion_mnist/hard_tiny.yaml", *SMALL, *STEPS, "--reference")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "plain recipe" in res.stderr
