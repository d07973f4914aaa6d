"""The model a run trains, built from `student.*`: a `distill_vit_*` student or any timm model, for the
data's classes, channels and size, with one-line errors naming the key at fault."""
from __future__ import annotations

import re

import torch

from distill.config import StudentConfig
from distill.errors import ConfigError, first_line
from distill.models.create import create_model_at

ARCH_KEYS = ("patch_size", "embed_dim", "depth", "num_heads")  # StudentConfig keys passed to the model where set
# Constructor arguments other keys set, so `student.kwargs` may not: the key to use instead
SET_ELSEWHERE = {"num_classes": "the data", "in_chans": "the data", "img_size": "data.img_size",
                 "drop_path_rate": "student.drop_path_rate", "distilled": "student.distilled",
                 "pretrained": "student.pretrained or student.checkpoint", **{k: f"student.{k}" for k in ARCH_KEYS}}


def student_kwargs(cfg: StudentConfig, num_classes: int, in_chans: int) -> dict:
    """The student's constructor arguments: the data's classes and channels, the student.* keys that are set
    (a ladder's rung, a patch size), then `student.kwargs`."""
    for key in cfg.kwargs:
        if key in SET_ELSEWHERE:
            raise ConfigError(f"student.kwargs.{key} is set by {SET_ELSEWHERE[key]}: remove it from student.kwargs")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=cfg.drop_path_rate, **cfg.kwargs)
    kwargs.update({k: getattr(cfg, k) for k in ARCH_KEYS if getattr(cfg, k)})
    if cfg.model.startswith("distill_vit_"):
        kwargs.update(distilled=cfg.distilled)  # timm's models have the token in their architecture, or none
    return kwargs


def _argument_refused(cfg: StudentConfig, e: TypeError) -> ConfigError:
    """`X.__init__() got an unexpected keyword argument 'window_size'` as the key that gave it."""
    match = re.search(r"argument '(\w+)'", str(e))
    arg = match.group(1) if match else None
    if arg in cfg.kwargs:
        return ConfigError(f"student.kwargs.{arg}={cfg.kwargs[arg]}: {cfg.model} takes no {arg}; remove it")
    if arg in ARCH_KEYS or arg == "drop_path_rate":
        return ConfigError(f"student.{arg}={getattr(cfg, arg)}: {cfg.model} takes no {arg}; remove it")
    return ConfigError(f"student.model={cfg.model}: {first_line(e)}")


def _check_input(model: torch.nn.Module, cfg: StudentConfig, in_chans: int, img_size: int) -> None:
    """One blank image of the data's size through a timm student: a model that cannot take it is one line
    here (a distill_vit_* student's constructor checks its sizes itself)."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, img_size, img_size))
    except (AssertionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"student.model={cfg.model} cannot take the {img_size}x{img_size} images ({first_line(e)}); "
                          "change data.img_size, or student.patch_size or student.kwargs where the model takes them"
                          ) from None
    finally:
        model.train(was_training)


def build_student(cfg: StudentConfig, num_classes: int, in_chans: int, img_size: int) -> torch.nn.Module:
    """The trained model: a `distill_vit_*` student or any timm model (a ViT, ConViT or Swin student, a CNN
    teacher run), built for `img_size` where it takes one. Start weights (`student.checkpoint`) are the
    caller's to load (`distill.train.start.load_start`): eval and export load a run's own instead."""
    if cfg.pretrained and cfg.checkpoint:
        raise ConfigError("student.pretrained=true and student.checkpoint both give start weights: keep one")
    kwargs = student_kwargs(cfg, num_classes, in_chans)
    try:
        model = create_model_at(cfg.model, img_size, pretrained=cfg.pretrained, small_input_stem=cfg.small_input_stem,
                                key="student.model", **kwargs)
    except TypeError as e:  # an argument the architecture does not take (a CNN's patch_size)
        raise _argument_refused(cfg, e) from None
    except (ValueError, AssertionError) as e:  # sizes the architecture cannot take (patch_size, num_heads, ...)
        raise ConfigError(f"student.model={cfg.model}: {first_line(e)}") from None
    if not cfg.model.startswith("distill_vit_"):
        _check_input(model, cfg, in_chans, img_size)
    if cfg.distilled:
        if not hasattr(model, "set_distilled_training"):
            raise ConfigError(f"student.distilled=true needs a student with a distillation token (distill_vit_*, or "
                              f"timm's *_distilled_* such as deit_tiny_distilled_patch16_224); {cfg.model} has none: "
                              "set student.distilled=false (every method then trains the class head)")
        model.set_distilled_training(True)  # training-mode forward returns (class, distillation) logits
    return model
