"""A battery of malformed inputs: each must end with exit status 2, one line `error: ...` naming
the problem, no traceback, and no earlier run touched."""
import gzip
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, in_fp32, needs_fmnist
from distill.cli import main
from distill.models import create_model

PLAIN = "recipes/fashion_mnist/plain_tiny.yaml"
HARD = "recipes/fashion_mnist/hard_tiny.yaml"
TINY = ["data.train_subset=64", "data.test_subset=64", "train.epochs=1", "data.batch_size=32"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the battery points at, and an earlier run that must survive it untouched."""
    d = tmp_path_factory.mktemp("bad")
    (d / "syntax.yaml").write_text("train:\n  epochs: [1,\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("trian:\n  epochs: 1\n")
    (d / "missing_base.yaml").write_text("base: nowhere.yaml\n")
    (d / "loop_a.yaml").write_text("base: loop_b.yaml\n")
    (d / "loop_b.yaml").write_text("base: loop_a.yaml\n")
    (d / "fm").mkdir()
    for split in ("train", "t10k"):  # a Fashion-MNIST folder whose image file is garbage
        (d / "fm" / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03junk"))
        (d / "fm" / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
    save_file(create_model("resnet10t", num_classes=100, in_chans=1).state_dict(), str(d / "t100.safetensors"))
    save_file(create_model("resnet10t", num_classes=10, in_chans=3).state_dict(), str(d / "t_rgb.safetensors"))
    (d / "t_corrupt.safetensors").write_bytes(b"not a safetensors file")
    (d / "notes.pth").write_text("epoch 1: top1 45\n")
    earlier = d / "runs" / "fashion_mnist_plain_tiny"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("name: fashion_mnist_plain_tiny\n")
    (earlier / "summary.json").write_text("{}\n")
    (d / "runs" / "unfinished").mkdir()
    (d / "runs" / "unfinished" / "config.yaml").write_text("name: unfinished\n")
    return d


def cases(d):
    runs = f"output_dir={d}/runs"
    teacher = ["teacher.model=resnet10t", "teacher.small_input_stem=false"]
    return {
        "missing recipe": (["config", f"{d}/nope.yaml"], "not found"),
        "yaml syntax": (["config", f"{d}/syntax.yaml"], "invalid YAML"),
        "recipe not a mapping": (["config", f"{d}/list.yaml"], "mapping"),
        "unknown key in recipe": (["config", f"{d}/unknown.yaml"], "trian"),
        "unknown override": (["config", PLAIN, "data.bogus=1"], "data.bogus"),
        "mistyped key": (["config", PLAIN, "data.batchsize=64"], "data.batchsize"),
        "wrong type": (["config", PLAIN, "data.batch_size=many"], "data.batch_size"),
        "negative epochs": (["config", PLAIN, "train.epochs=-3"], "train.epochs"),
        "alpha above 1": (["config", HARD, "distill.alpha=1.5"], "distill.alpha"),
        "alpha below 0": (["config", HARD, "distill.alpha=-0.1"], "distill.alpha"),
        "a key the method does not read": (["config", HARD, "distill.tau=3"], "distill.tau=3.0 is not read by distill.type=hard"),
        "a weight without a teacher": (["config", PLAIN, "distill.alpha=0.3"],
                                       "distill.alpha=0.3 is not read by distill.type=none"),
        "top-k without the cache": (["config", HARD, "distill.cache_topk=3"], "distill.cache_topk=3 shapes the logit cache"),
        "batch size 0": (["config", PLAIN, "data.batch_size=0"], "data.batch_size"),
        "bad distill type": (["config", HARD, "distill.type=warm"], "distill.type"),
        "override without =": (["config", PLAIN, "train.epochs"], "key=value"),
        "missing base": (["config", f"{d}/missing_base.yaml"], "nowhere.yaml"),
        "base loop": (["config", f"{d}/loop_a.yaml"], "loops"),
        "distillation without teacher": (["config", PLAIN, "distill.type=hard"], "teacher.model"),
        "token without distillation": (["config", PLAIN, "student.distilled=true"], "student.distilled"),
        "bad run name": (["config", PLAIN, "name=a/b"], "name"),
        "odd batch under cutmix": (["config", PLAIN, "data.batch_size=33"], "data.batch_size"),
        "missing resume path": (["config", PLAIN, f"train.resume={d}/none"], "train.resume"),
        "run name exists": (["train", PLAIN, runs, *TINY], "already exists"),
        "missing dataset": (["train", PLAIN, f"output_dir={d}/o1", *TINY, "data.name=cifar10",
                             f"data.root={d}/nodata", "data.download=false"], "cifar10"),
        "corrupt dataset": (["train", PLAIN, f"output_dir={d}/o2", *TINY, f"data.root={d}/fm"], "fm"),
        "subset too large": (["train", PLAIN, f"output_dir={d}/o3", "data.train_subset=70000"], "train_subset"),
        "unknown student": (["train", PLAIN, f"output_dir={d}/o4", *TINY, "student.model=vit_nope"],
                            "student.model=vit_nope: unknown model"),
        "unknown teacher": (["train", HARD, f"output_dir={d}/o5", *TINY, "teacher.model=resnet_nope"],
                            "teacher.model=resnet_nope: unknown model"),
        "text file as start weights": (["train", PLAIN, f"output_dir={d}/o11", *TINY, f"student.checkpoint={d}/notes.pth"],
                                       "notes.pth: it is not a weights file distill can read"),
        "teacher file missing": (["train", HARD, f"output_dir={d}/o6", *TINY, *teacher,
                                  f"teacher.checkpoint={d}/none.safetensors"], "none.safetensors"),
        "teacher class count": (["train", HARD, f"output_dir={d}/o7", *TINY, *teacher,
                                 f"teacher.checkpoint={d}/t100.safetensors"], "100 classes"),
        "teacher channel count": (["train", HARD, f"output_dir={d}/o8", *TINY, *teacher,
                                   f"teacher.checkpoint={d}/t_rgb.safetensors"], "in_chans=3"),
        "teacher corrupt": (["train", HARD, f"output_dir={d}/o9", *TINY, *teacher,
                             f"teacher.checkpoint={d}/t_corrupt.safetensors"], "t_corrupt"),
        "cuda graphs without a GPU": (["train", PLAIN, f"output_dir={d}/o10", *TINY, "train.cuda_graphs=true"],
                                      "train.cuda_graphs"),
        "unwritable output": (["train", PLAIN, "output_dir=/proc/distill-test", *TINY], "writable"),
        "eval of a non-run": (["eval", str(d)], "not a run folder"),
        "compare of a non-run": (["compare", str(d)], "is not a run folder"),
        "compare of a missing folder": (["compare", f"{d}/runs/nope"], "nope does not exist"),
        "compare of an unfinished run": (["compare", f"{d}/runs/unfinished"], "not a finished run"),
    }


CASE_NAMES = list(cases(ROOT))


@needs_fmnist
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_exits_2_with_one_line(world, name, capsys):
    argv, must_mention = cases(world)[name]
    earlier = world / "runs" / "fashion_mnist_plain_tiny"
    before = {p.name: p.stat().st_mtime_ns for p in earlier.iterdir()}
    assert main(in_fp32(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert must_mention in err, err
    assert {p.name: p.stat().st_mtime_ns for p in earlier.iterdir()} == before
    failed_run = next((a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")), None)
    if failed_run and name != "run name exists":  # a failed start leaves no run folder behind
        assert not (world / failed_run / "fashion_mnist_plain_tiny").exists()


@pytest.fixture(scope="module")
def gpu_count_python(tmp_path_factory):
    """A stand-in for launch.sh's PYTHON that answers its GPU count (`python -c ...`) with 0 at once: the
    checks under test come after that question, and importing torch to answer it took ~2 s a case. Were a
    bad value let through, launch.sh would exec it as `python -m distill train`: exit 0, and the test fails."""
    stub = tmp_path_factory.mktemp("launch") / "python"
    stub.write_text("#!/bin/sh\necho 0\n")
    stub.chmod(0o755)
    return str(stub)


@pytest.mark.parametrize("env,must_mention", [
    ({"NPROC": "two"}, "NPROC"),
    ({"NPROC": "0"}, "NPROC"),
    ({"NNODES": "x"}, "NNODES"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK"),
    ({"MASTER_PORT": "port"}, "MASTER_PORT"),
])
def test_launch_rejects_bad_environment(env, must_mention, gpu_count_python):
    res = subprocess.run([str(ROOT / "launch.sh"), PLAIN], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": gpu_count_python, **env}, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and must_mention in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_launch_help_and_missing_recipe():
    ok = subprocess.run([str(ROOT / "launch.sh"), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "NPROC" in ok.stdout and "NNODES" in ok.stdout
    bad = subprocess.run([str(ROOT / "launch.sh"), "nope.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.yaml" in bad.stderr
