"""`distill bench`: runs on this CPU, writes its JSON, interleaves rounds, and times cached distillation."""
import json

import pytest

from conftest import PLAIN, needs_fmnist, run_cli

pytestmark = needs_fmnist

SMALL = ["data.train_subset=1024", "data.batch_size=32"]
STEPS = ["--steps", "4", "--warmup", "2"]


def test_bench_with_reference_rounds(tmp_path):
    out = tmp_path / "bench.json"
    res = run_cli("bench", PLAIN, *SMALL, *STEPS, "--reference", "--rounds", "2", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["global_batch"] == 32 and result["rounds"] == 2
    rounds = result["per_round"]
    assert len(rounds) == 2 and all(r["reference_img_per_s"] > 0 and r["ceiling_img_per_s"] > 0 for r in rounds)
    # totals over the interleaved blocks: all images over all seconds, the harmonic mean of the rounds
    for k in ("train", "reference", "ceiling"):
        assert result[f"{k}_img_per_s"] == pytest.approx(2 / sum(1 / r[f"{k}_img_per_s"] for r in rounds))
    assert result["vs_ceiling"] == pytest.approx(result["train_img_per_s"] / result["ceiling_img_per_s"])
    assert result["vs_reference"] == pytest.approx(result["train_img_per_s"] / result["reference_img_per_s"])
    assert "train_img_per_s" in res.stdout and "per_round" not in res.stdout  # the table


def test_bench_cached_distillation_records_then_replays(tmp_path):
    args = ["recipes/fashion_mnist/hard_tiny.yaml", *SMALL, "teacher.checkpoint=null", "teacher.model=resnet10t",
            "teacher.small_input_stem=false", "distill.cache=true", f"output_dir={tmp_path}", *STEPS]
    res = run_cli("bench", *args, "--out", tmp_path / "cached.json")
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "cached.json").read_text())
    assert result["teacher_cached"] and "teacher_share" not in result  # the teacher did not run in the timed steps
    assert len(list((tmp_path / "logit_cache").rglob("epoch_0001_rank0of1.safetensors"))) == 1


def test_bench_rejects_bad_rounds():
    res = run_cli("bench", PLAIN, *SMALL, *STEPS, "--rounds", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--rounds" in res.stderr


def test_bench_reference_needs_a_plain_recipe():
    res = run_cli("bench", "recipes/fashion_mnist/hard_tiny.yaml", *SMALL, *STEPS, "--reference")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "plain recipe" in res.stderr
