"""Teachers: any timm model, built, loaded and frozen, that takes the student's batch.

`load_teacher(cfg.teacher, ...)` returns a `Teacher`: frozen, always in eval mode, adapting the
student's batch (normalisation, gray -> RGB, resolution) to what the teacher was trained on, and
returning logits. The trainer runs it under `no_grad` and hands the logits to the loss. Building
the model and reading its weights are role-neutral, in `distill/models/`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import TeacherError, first_line
from distill.models.create import first_conv, model_name, create_model_at
from distill.models.weights import load_weights


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)


class Teacher(nn.Module):
    """A frozen model in eval mode that takes the student's batch and returns logits.

    Args:
        data_mean, data_std: the normalisation of the student's batch (one value per data channel).
        mean, std: the teacher's normalisation; None = the data's (no re-normalisation).
        in_chans: the teacher's input channels; None = its first conv's. Gray data (1 channel)
            into a 3-channel teacher is repeated across channels.
        img_size: resize the batch to img_size x img_size (bilinear) first; None keeps it.
    """

    def __init__(self, model: nn.Module, data_mean: Sequence[float], data_std: Sequence[float],
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 in_chans: Optional[int] = None, img_size: Optional[int] = None):
        super().__init__()
        conv = first_conv(model)
        self.in_chans = in_chans or (conv[1].in_channels if conv else len(data_mean))
        data_chans = len(data_mean)
        if data_chans != self.in_chans and data_chans != 1:
            raise TeacherError(f"the data has {data_chans} channels but the teacher takes in_chans={self.in_chans}; "
                               "only gray (1) -> RGB is adapted")
        if (mean is None) != (std is None):
            raise TeacherError("set both teacher.mean and teacher.std, or neither")
        self.model = model
        self.img_size = img_size
        self.expand = data_chans != self.in_chans  # (B, 1, H, W) -> (B, C, H, W)

        mean_s, std_s = _channels(data_mean), _channels(data_std)
        mean_t, std_t = (mean_s, std_s) if mean is None else (_channels(mean), _channels(std))
        for t, what in ((mean_t, "mean"), (std_t, "std")):
            if t.shape[1] not in (1, self.in_chans):
                raise TeacherError(f"teacher.{what} has {t.shape[1]} values; give 1 or in_chans={self.in_chans}")
        ones = torch.ones(1, self.in_chans, 1, 1)
        self.renorm = not (torch.equal(mean_s * ones, mean_t * ones) and torch.equal(std_s * ones, std_t * ones))
        # (x * std_s + mean_s - mean_t) / std_t as one affine map per channel, (1, C, 1, 1) each
        self.register_buffer("scale", std_s / std_t * ones, persistent=False)
        self.register_buffer("shift", (mean_s - mean_t) / std_t * ones, persistent=False)

        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        """Always eval: BatchNorm statistics and dropout of a teacher must not change."""
        return super().train(False)

    def _adapt_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm:  # broadcasting (B, 1, H, W) against (1, C, 1, 1) also repeats gray
            return x * self.scale + self.shift
        return x.expand(-1, self.in_chans, -1, -1) if self.expand else x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                             align_corners=False, antialias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_data, H, W) normalised as the data -> (B, num_classes) teacher logits."""
        with torch.no_grad():  # a teacher never needs a graph, whoever calls it
            return self.model(self._inputs(x))

    def pooled_features(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """(B, C_data, H, W) -> (B, C_i): intermediate `index` of timm's `forward_intermediates`
        (a stage of a CNN, a block of a ViT), averaged over its spatial positions."""
        with torch.no_grad():
            feature_map = self.model.forward_intermediates(self._inputs(x), indices=[index], intermediates_only=True)[0]
            return feature_map.mean(dim=(2, 3))  # (B, C_i, h, w) -> (B, C_i)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_data, H, W) -> (B, D): timm's pooled pre-logits features, the input of the classifier."""
        with torch.no_grad():
            return self.model.forward_head(self.model.forward_features(self._inputs(x)), pre_logits=True)

    def check_input(self, in_chans: int, img_size: int) -> None:
        """Run one blank image of the student's shape; a model that cannot take it (a ViT built for
        224 px given 32 px) raises one TeacherError naming `teacher.img_size`."""
        try:
            self(torch.zeros(1, in_chans, img_size, img_size, device=self.scale.device))
        except (AssertionError, RuntimeError, ValueError) as e:
            native = getattr(self.model, "pretrained_cfg", {}).get("input_size", (None,))[-1]
            example = f" (e.g. teacher.img_size={native}, its default)" if native and native != img_size else ""
            raise TeacherError(f"teacher.model={model_name(self.model)} cannot take the {img_size}x{img_size} "
                               f"batch ({first_line(e)}); set teacher.img_size to the size it was built or trained "
                               f"for{example}: the teacher resizes the batch to it") from None

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as `self.model` takes it, for a caller that runs the model its own way (a
        method's `TeacherTaps` asks for intermediate layers)."""
        return self._inputs(x)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher's model takes it: its channels, normalisation and size."""
        resize = self.img_size is not None and tuple(x.shape[-2:]) != (self.img_size, self.img_size)
        # Per-channel affine maps commute with bilinear resizing: adapt at the smaller size.
        if resize and x.shape[-1] > self.img_size:
            x, resize = self._resize(x), False
        x = self._adapt_pixels(x)
        if resize:
            x = self._resize(x)
        return x


def load_teacher(cfg, num_classes: int, in_chans: int, data_mean: Sequence[float],
                 data_std: Sequence[float]) -> Teacher:
    """Build `cfg.model` (a TeacherConfig), load its weights, freeze it, wrap it as a `Teacher`.

    Weights: `cfg.checkpoint` if set, else hub weights if `cfg.pretrained`, else none (tests).
    Normalisation: `cfg.mean/std`, else the hub weights' (pretrained), else the data's (a teacher
    trained by this framework shares the student's normalisation).
    """
    if not cfg.model:
        raise TeacherError("teacher.model is not set: name a timm model (e.g. teacher.model=resnet18)")
    hub = cfg.pretrained and not cfg.checkpoint
    # Hub weights are RGB: build 3 channels and let the Teacher repeat a gray batch.
    chans = 3 if hub and in_chans == 1 else in_chans
    build = dict(num_classes=num_classes, in_chans=chans, pretrained=hub, small_input_stem=cfg.small_input_stem,
                 fix="give teacher.checkpoint=FILE (a .safetensors/.pth file or a run folder) instead")
    model = create_model_at(cfg.model, cfg.img_size, **build)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    mean, std = cfg.mean, cfg.std
    if mean is None and std is None and hub:
        mean, std = model.pretrained_cfg.get("mean"), model.pretrained_cfg.get("std")
    return Teacher(model, data_mean, data_std, mean=mean, std=std, in_chans=chans, img_size=cfg.img_size)
