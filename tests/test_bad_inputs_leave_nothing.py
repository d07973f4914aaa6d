"""Bad inputs to train, compare, export and eval: each ends in one `error: ...` line naming the problem and its fix, exit
status 2, no traceback, and nothing lost: no run folder left behind (so the corrected command runs),
no file half-written or overwritten."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import PLAIN, ROOT, in_fp32, needs_fmnist
from distill.cli import main
from distill.config import to_yaml
from distill.recipe import load_config
from distill.models import build_student

HARD = "recipes/fashion_mnist/hard_tiny.yaml"
TINY = ["data.train_subset=64", "data.test_subset=64", "train.epochs=1", "data.batch_size=32"]
VIT_TEACHER = ["teacher.model=vit_tiny_patch16_224", "teacher.checkpoint=null", "teacher.small_input_stem=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Recipes and an image folder (with one corrupt image) that the train cases point at."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "train_is_5.yaml").write_text("train: 5\n")
    (d / "recipes").mkdir()
    (d / "recipes" / "mine.yaml").write_text("train:\n  epochs: 1\n")
    for split in ("train", "val"):
        for name, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            for i in range(8):
                path = d / "images" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 20), color).save(path)
    (d / "images" / "train" / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return d


def train_cases(d):
    """name: (train arguments after `output_dir=...`, what the error line must say). Issue 23's item numbers."""
    images = ["data.name=imagefolder", f"data.root={d}/images", "data.batch_size=8", "train.epochs=1"]
    return {
        "1 lr nan": ([PLAIN, *TINY, "train.lr=nan"], "train.lr=nan must be a finite number"),
        "1 lr inf": ([PLAIN, *TINY, "train.lr=inf"], "train.lr=inf must be a finite number"),
        "1 a list with inf": ([PLAIN, *TINY, "data.ratio=[0.5,inf]"], "data.ratio=[0.5, inf] must be finite numbers"),
        "2 betas": ([PLAIN, *TINY, "train.betas=[2,0]"], "train.betas=[2.0, 0.0] must be two numbers in [0, 1)"),
        "3 drop path": ([PLAIN, *TINY, "student.drop_path_rate=1.5"], "student.drop_path_rate=1.5 must be in [0, 1)"),
        "4 subset below a batch": ([PLAIN, "data.train_subset=100", "data.batch_size=128", "data.test_subset=64"],
                                   "100 images, fewer than one global batch (128 x 1 processes)"),
        "4 accumulation beyond the epoch": ([PLAIN, *TINY, "train.grad_accum_steps=4"],
                                            "train.grad_accum_steps=4 is more than the 2 steps of an epoch"),
        "5 negative clip": ([PLAIN, *TINY, "train.clip_grad=-1"], "train.clip_grad=-1.0 must be > 0"),
        "8 corrupt image": ([PLAIN, *images], "3.png: cannot decode image"),
        "8 ViT teacher at 32 px": ([HARD, *TINY, *VIT_TEACHER], "set teacher.img_size"),
        "8 divergence": ([PLAIN, *TINY, "train.lr=1e30"], "loss became non-finite"),
        "9 section is a number": ([str(d / "train_is_5.yaml"), *TINY], "`train: 5` is not a section of keys"),
        "9 recipe is a directory": ([str(d / "recipes"), *TINY], f"is a directory; pass a YAML file, such as "
                                                                f"{d.resolve() / 'recipes' / 'mine.yaml'}"),
    }


@needs_fmnist
@pytest.mark.parametrize("name", list(train_cases(Path("."))))
def test_bad_train_input_is_one_line_and_leaves_no_run_folder(files, name, tmp_path, capsys):
    argv, must_say = train_cases(files)[name]
    out = tmp_path / "runs"
    assert main(in_fp32(["train", argv[0], f"output_dir={out}", *argv[1:]])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert must_say in err, err
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())  # the corrected command can run


def finished_run(folder, name="run", ema=False):
    """A run folder as a finished plain run leaves it (random weights; the summary of a run)."""
    cfg = load_config(PLAIN, [f"name={name}", f"train.ema={str(ema).lower()}"])
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    save_file(build_student(cfg.student, 10, 1, cfg.data.img_size).state_dict(), str(run / "student.safetensors"))
    summary = {"name": name, "best_top1": 80.0, "final_top1": 79.0, "params": 3.2e6, "train_img_per_s": 400.0,
               "wall_s": 100.0, "student": cfg.student.model, "distill_type": "none", "seed": 0, "epochs": 1}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "top1": 79.0}) + "\n")
    return run


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_compare_refuses_a_file_as_out_and_one_run_twice(tmp_path, capsys):
    """Item 6: `--out` is a folder (checked before anything is read); one run given twice is one seed."""
    a, b = finished_run(tmp_path, "a"), finished_run(tmp_path, "b")
    taken = tmp_path / "report.md"
    taken.write_text("mine")
    assert main(["compare", str(a), str(b), "--out", str(taken)]) == 2
    assert f"--out {taken} is a file, not a folder" in one_error_line(capsys)
    assert main(["compare", str(a), str(b), "--out", str(taken / "sub")]) == 2
    assert f"lies under the file {taken}" in one_error_line(capsys)
    assert taken.read_text() == "mine"
    assert main(["compare", str(a), str(tmp_path / "." / "a") + "/"]) == 2
    assert "is given twice" in one_error_line(capsys)
    assert main(["compare", str(a), str(b)]) == 0  # two runs: the table


def test_export_under_a_file_and_of_a_damaged_student(tmp_path, capsys):
    """Item 7: the export folder under a file, and a damaged student.safetensors; nothing written."""
    run = finished_run(tmp_path)
    (tmp_path / "file").write_text("mine")
    assert main(["export", str(run), str(tmp_path / "file" / "x")]) == 2
    assert f"lies under the file {tmp_path / 'file'}" in one_error_line(capsys)
    weights = run / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])  # truncated
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    err = one_error_line(capsys)
    assert f"cannot read student file {weights}" in err and "damaged" in err and "teacher" not in err
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]  # no export folder, no temporary


@needs_fmnist
def test_eval_names_the_students_own_problems(tmp_path, capsys):
    """Item 9: `--ema` on a run without EMA, a damaged student file, a student of another size."""
    run = finished_run(tmp_path)
    assert main(["eval", str(run), "--ema"]) == 2
    err = one_error_line(capsys)
    assert "has no EMA weights" in err and "train.ema=false" in err and "not finished" not in err
    other = finished_run(tmp_path, "other")
    cfg = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(cfg.replace("model: distill_vit_tiny", "model: distill_vit_small"))
    assert main(["eval", str(other), "data.test_subset=64"]) == 2
    err = one_error_line(capsys)
    assert "does not fit student.model=distill_vit_small" in err
    assert "teacher" not in err and "small_input_stem" not in err
    (run / "student.safetensors").write_bytes(b"garbage" * 10)
    assert main(["eval", str(run), "data.test_subset=64"]) == 2
    err = one_error_line(capsys)
    assert "cannot read student file" in err and "teacher" not in err


# `distill train` in a fresh process, timing the teacher's loading alone (the machine's load and the
# process's start-up stay out of the figure); its stderr is the command's own.
TIMED_TRAIN = """
import sys, time
import distill.train.build as build
from distill.cli import main
load = build.load_teacher
def timed(*args, **kwargs):
    t0 = time.perf_counter()
    try:
        return load(*args, **kwargs)
    finally:
        print(f"teacher_s={time.perf_counter() - t0:.2f}")
build.load_teacher = timed
sys.exit(main(sys.argv[1:]))
"""


@needs_fmnist
@pytest.mark.slow  # a fresh process (huggingface_hub reads HF_ENDPOINT and HF_HOME at import): ~7 s, most of it imports
def test_hub_teacher_without_network_is_one_fast_line(tmp_path):
    """Item 9: hub weights that are not cached, with the hub unreachable (a closed local port): one
    line naming teacher.checkpoint, at once, not huggingface_hub's retries (~50 s, 23 lines of log)."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    res = subprocess.run([sys.executable, "-c", TIMED_TRAIN, "train", HARD, f"output_dir={tmp_path / 'runs'}", *TINY,
                          "teacher.model=resnet18", "teacher.pretrained=true", "teacher.checkpoint=null"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert "not cached, and the hub is unreachable" in lines[0] and "teacher.checkpoint=FILE" in lines[0]
    seconds = float(res.stdout.split("teacher_s=")[1].split()[0])
    assert seconds < 10, f"{seconds} s to give up on the hub"  # the retries alone sleep 23 s per file
    assert not (tmp_path / "runs" / "fashion_mnist_hard_tiny").exists()
