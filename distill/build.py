"""Builders that turn sub-configs into the objects the trainer runs."""
from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2

import students  # noqa: F401  (registers distill_vit_* with timm)
from distill.config import ConfigError, DataConfig, StudentConfig, TrainConfig
from distill.datasets import load_split
from teachers import create_model


def build_student(cfg: StudentConfig, num_classes: int, in_chans: int, img_size: int) -> torch.nn.Module:
    """The trained model: a `distill_vit_*` student, or any timm model (e.g. a CNN teacher run)."""
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=cfg.drop_path_rate)
    if cfg.model.startswith("distill_vit_"):
        kwargs.update(img_size=img_size, distilled=cfg.distilled)
        if cfg.patch_size:
            kwargs["patch_size"] = cfg.patch_size
    elif cfg.distilled:
        raise ConfigError(f"student.distilled=true needs a distill_vit_* student, not {cfg.model}")
    model = create_model(cfg.model, pretrained=cfg.pretrained, small_input_stem=cfg.small_input_stem, **kwargs)
    if cfg.distilled:
        model.set_distilled_training(True)  # training-mode forward returns (class, distillation) logits
    return model


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW; timm's factory leaves norms, biases and `no_weight_decay()` tokens undecayed.

    The fused kernel (CPU and CUDA) updates all parameters in one pass: fewer launches per step.
    """
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                               fused=True)


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The DeiT rule: lr grows linearly with the global batch, so a recipe means the same at any scale."""
    return cfg.lr * global_batch / cfg.lr_base_batch


def build_scheduler(optimizer, cfg: TrainConfig, updates_per_epoch: int, ticks_per_update: int):
    """Linear warm-up, then cosine decay to `min_lr`, per optimizer update.

    Accelerate's prepared scheduler ticks once per process at every update (it assumes a schedule
    written for one process), so the schedule is laid out in ticks: updates x ticks_per_update.
    """
    total = max(1, cfg.epochs * updates_per_epoch) * ticks_per_update
    warmup = int(cfg.warmup_epochs * updates_per_epoch) * ticks_per_update
    base_lr = optimizer.param_groups[0]["lr"]
    floor = min(cfg.min_lr / base_lr, 1.0)

    def factor(tick: int) -> float:
        if tick < warmup:
            return (tick + ticks_per_update) / (warmup + ticks_per_update)
        progress = (tick - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_data(cfg: DataConfig):
    """Both splits; raises DataError when a dataset is missing or malformed."""
    return load_split(cfg, train=True), load_split(cfg, train=False)
