"""train.channels_last (timm's --channels-last): the student's and the teacher's convolutions train and run
in NHWC, its weights are saved, and a run resumed from a checkpoint ends where the whole run did."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import distill.train.step
from conftest import needs_fmnist, run_main

pytestmark = [needs_fmnist, pytest.mark.slow]  # three real training runs: the full tier only

TEACHER = ["recipes/fashion_mnist/teacher_resnet18.yaml", "student.model=resnet10t", "student.small_input_stem=false",
           "data.train_subset=256", "data.test_subset=100", "data.batch_size=32", "data.cutmix_alpha=0",
           "train.epochs=2", "train.warmup_epochs=0", "train.log_every=4", "train.channels_last=true"]


@pytest.fixture
def layouts(monkeypatch):
    """For every step: whether each 4-d weight of the student, and of the teacher, is channels-last."""
    seen = []
    original = distill.train.step.TrainStep.__call__

    def record(self, *args, **kwargs):
        modules = {"student": self.model, "teacher": self.teacher}
        seen.append({name: {p.is_contiguous(memory_format=torch.channels_last)
                            for p in m.parameters() if p.dim() == 4}
                     for name, m in modules.items() if m is not None})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(distill.train.step.TrainStep, "__call__", record)
    return seen


def test_channels_last_trains_the_student_and_teacher_in_nhwc_and_resumes_exactly(tmp_path, layouts):
    assert run_main("train", *TEACHER, f"output_dir={tmp_path}", "name=t").returncode == 0
    run = tmp_path / "t"
    assert layouts and all(s == {"student": {True}} for s in layouts)  # every conv weight, every step
    weights = load_file(str(run / "student.safetensors"))  # written at all: safetensors refuses strided tensors

    # killed after its first epoch: the second is trained again from the checkpoint, to the same weights
    resumed = tmp_path / "again" / "t"
    shutil.copytree(run, resumed)
    (resumed / "summary.json").unlink()
    (resumed / "student.safetensors").unlink()
    last = sorted((resumed / "checkpoints").iterdir())[-1]
    shutil.rmtree(last)
    assert run_main("train", *TEACHER, f"output_dir={tmp_path / 'again'}", "name=t",
                    "train.resume=auto").returncode == 0
    again = load_file(str(resumed / "student.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert json.loads((resumed / "summary.json").read_text())["final_top1"] == \
        json.loads((run / "summary.json").read_text())["final_top1"]

    layouts.clear()  # a student distilled from it with channels_last: the teacher's convolutions too
    res = run_main("train", "recipes/fashion_mnist/kd_tiny.yaml", *TEACHER[3:], f"output_dir={tmp_path}",
                   f"teacher.checkpoint={run}", "teacher.model=resnet10t", "teacher.small_input_stem=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert layouts and all(s["teacher"] == {True} for s in layouts), layouts[0]
