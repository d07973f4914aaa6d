"""Any timm model as a student: built for the data's size, the student.* keys and
`student.kwargs` passed where the model takes them and refused in one line where it does not, the
distillation token only where the model has one, every method without a token open to it."""
import json

import pytest
import torch

from conftest import ROOT, needs_fmnist, run_main
from distill.recipe import load_config
from distill.errors import ConfigError
from distill.methods import build_criterion, build_method
from distill.models import build_student
from teachers import load_teacher

PLAIN = str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")
X = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # Fashion-MNIST's shape


def student(*overrides, recipe=PLAIN):
    cfg = load_config(recipe, list(overrides))
    torch.manual_seed(0)
    return build_student(cfg.student, 10, 1, cfg.data.img_size), cfg


def test_a_timm_vit_and_convit_are_built_for_32_px():
    """Before: nothing passed img_size to a timm student, so each stayed at 224 and the first batch ended
    in `AssertionError: Input height (32) doesn't match model (224)`; student.patch_size was refused.
    (The Swin: test_convit_and_swin_recipes_train.)"""
    vit, _ = student("student.model=vit_tiny_patch16_224", "student.patch_size=4")
    assert vit.patch_embed.img_size == (32, 32) and vit.patch_embed.grid_size == (8, 8)
    assert vit.patch_embed.proj.in_channels == 1 and vit.pos_embed.shape == (1, 1 + 64, 192)
    convit, _ = student("student.model=convit_tiny", "student.patch_size=4")
    assert convit.patch_embed.grid_size == (8, 8) and convit.pos_embed.shape[1] == 64  # no class row: added later
    for model in (vit, convit):  # the Swin: test_convit_and_swin_recipes_train (27.5M parameters to build)
        out = model(X)
        assert out.shape == (2, 10)
        out.square().sum().backward()
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("overrides, message", [
    (["student.model=resnet10t", "student.patch_size=4"], "student.patch_size=4: resnet10t takes no patch_size; remove it"),
    (["student.model=resnet10t", "student.kwargs.window_size=4"],
     "student.kwargs.window_size=4: resnet10t takes no window_size; remove it"),
    (["student.kwargs.img_size=64"], "student.kwargs.img_size is set by data.img_size: remove it from student.kwargs"),
    (["student.model=vit_tiny_patch16_224", "data.img_size=8"],
     "student.model=vit_tiny_patch16_224 cannot take the 8x8 images (Calculated padded input size"),
    (["student.model=vit_tiny_patch16_224", "student.distilled=true", "distill.type=hard", "teacher.model=resnet10t"],
     "student.distilled=true needs a student with a distillation token"),
])
def test_what_a_model_cannot_take_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        student(*overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_timms_distilled_deit_takes_the_token():
    deit, _ = student("student.model=deit_tiny_distilled_patch16_224", "student.patch_size=8", "student.distilled=true",
                      "distill.type=hard", "teacher.model=resnet10t")
    cls, dist = deit.train()(X)  # switched on: (class, distillation) logits, as distill_vit_* with distilled=true
    assert cls.shape == dist.shape == (2, 10) and not torch.equal(cls, dist)


@pytest.mark.parametrize("method, extra", [("soft_tiny", ["student.distilled=false"]), ("kd_tiny", []),
                                           ("dkd_tiny", []), ("dist_tiny", []), ("feature_tiny", []),
                                           ("feature_tiny", ["distill.feature_match=block"])])
def test_every_method_without_a_token_trains_a_timm_student(method, extra):
    """One step of each method on a timm ViT at 32 px: a finite loss, every student parameter reached."""
    recipe = str(ROOT / f"recipes/fashion_mnist/{method}.yaml")
    model, cfg = student("student.model=vit_tiny_patch16_224", "student.patch_size=8", "teacher.checkpoint=null",
                         "teacher.model=resnet10t", "teacher.small_input_stem=false", *extra, recipe=recipe)
    teacher = load_teacher(cfg.teacher, 10, 1, [0.29], [0.35])
    loss_fn = build_method(cfg.distill, build_criterion(False, 0.0))
    trainable, step_teacher = loss_fn.wrap(model, teacher, 1, 32, 64)  # as build_run calls it (64 images)
    with torch.no_grad():
        teacher_out = step_teacher(X)
    terms = loss_fn(trainable(X), torch.tensor([3, 7]), teacher_out)
    assert torch.isfinite(terms["loss"]) and terms["distill"] > 0
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("recipe, model", [("convit_kd", "convit_tiny"), ("swin_kd", "swin_tiny_patch4_window7_224")])
def test_convit_and_swin_recipes_train(tmp_path, recipe, model):
    """The recipes as a user runs them, a few steps on a subset (a random resnet10t teacher stands in)."""
    res = run_main("train", f"recipes/fashion_mnist/{recipe}.yaml", f"output_dir={tmp_path}",
                   "data.train_subset=128", "data.test_subset=64", "data.batch_size=32", "train.epochs=1",
                   "train.warmup_epochs=0", "teacher.checkpoint=null", "teacher.model=resnet10t")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / f"fashion_mnist_{recipe}"
    summary = json.loads((run / "summary.json").read_text())
    built, _ = student(recipe=str(ROOT / f"recipes/fashion_mnist/{recipe}.yaml"))
    assert type(built).__name__ in ("ConVit", "SwinTransformer") and built.pretrained_cfg["architecture"] == model
    assert built.patch_embed.img_size == (32, 32) and built.patch_embed.grid_size == (8, 8)
    if recipe == "swin_kd":  # window 4 (student.kwargs): 2x2 windows on the 8x8 first stage, odd blocks shifted by 2
        assert built.layers[0].blocks[0].window_size == (4, 4) and built.layers[0].blocks[1].shift_size == (2, 2)
    assert summary["params"] == sum(p.numel() for p in built.parameters())  # the 32 px, window-4 build
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["loss_distill"] > 0 and 0 <= last["top1"] <= 100
