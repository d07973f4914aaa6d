"""What a method may ask of the models beyond logits, and where a method's own state trains.

- `Taps`: the student's and the teacher's logits, pooled pre-logits features and the unpooled
  outputs of chosen layers (timm's `forward_intermediates`: a ViT block's tokens, a CNN stage's map),
  for a method with `taps = True`. `StudentTaps` and `TeacherTaps` wrap the two models so the step
  runs them as it runs any student and teacher: `model(x)`, `teacher(x)`.
- `WithMethod`: the student beside a method that owns parameters or buffers (CRD's embedding heads
  and memory bank). The module that trains holds both, so the optimizer updates the method's
  parameters, DDP averages their gradients, and Accelerate's checkpoint (`model.safetensors`) saves
  and restores its state bit for bit; the bare student, which is evaluated and exported, holds none.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple, Union

import torch
from torch import nn


class Taps(NamedTuple):
    """One forward's outputs for a method with `taps = True`."""

    logits: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]  # (B, K), or (class, dist) of a distilled student
    pre_logits: torch.Tensor  # (B, D): the classifier's input (ViT: the final-norm class token; CNN: pooled)
    layers: List[torch.Tensor]  # one per asked layer, unpooled: (B, C, h, w) ("NCHW") or (B, N, D) ("NLC", ViTs)


def _intermediates(model: nn.Module, x: torch.Tensor, layers: Sequence[int], fmt: str):
    """(final features, [layer outputs]) of a timm-style model; no layers: `forward_features` alone."""
    if not layers:
        return model.forward_features(x), []
    fmt_arg = {} if fmt == "NCHW" else {"output_fmt": fmt}  # timm's CNNs take no output_fmt; NCHW is their only one
    return model.forward_intermediates(x, indices=list(layers), **fmt_arg)


def _taps(model: nn.Module, x: torch.Tensor, layers: Sequence[int], fmt: str) -> Taps:
    final, maps = _intermediates(model, x, layers, fmt)
    return Taps(model.forward_head(final), model.forward_head(final, pre_logits=True), list(maps))


class StudentTaps(nn.Module):
    """The student, returning `Taps`: its logits, pre-logits features and the outputs of `layers`
    (indices of its `forward_intermediates`, negative from the end; before the final norm)."""

    def __init__(self, student: nn.Module, layers: Sequence[int] = (), fmt: str = "NCHW"):
        super().__init__()
        self.student, self.layers, self.fmt = student, tuple(layers), fmt

    def forward(self, x: torch.Tensor) -> Taps:
        return _taps(self.student, x, self.layers, self.fmt)

    def no_weight_decay(self) -> set:
        inner = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{name}" for name in inner}


class TeacherTaps(nn.Module):
    """The frozen `teachers.Teacher`, returning `Taps` (no graph): its logits, pre-logits and `layers`."""

    def __init__(self, teacher: nn.Module, layers: Sequence[int] = (), fmt: str = "NCHW"):
        super().__init__()
        self.teacher, self.layers, self.fmt = teacher, tuple(layers), fmt

    def forward(self, x: torch.Tensor) -> Taps:
        with torch.no_grad():
            return _taps(self.teacher.model, self.teacher.adapt(x), self.layers, self.fmt)


def probe(module: nn.Module, in_chans: int, img_size: int) -> Taps:
    """One forward of a zero image in eval mode, without a graph: the shapes of what `module` returns
    (the method sizes its heads from them). Eval mode draws nothing: the random streams stay as they were."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            device = next(module.parameters()).device
            return module(torch.zeros(1, in_chans, img_size, img_size, device=device))
    finally:
        module.train(was_training)


class WithMethod(nn.Module):
    """The module that trains when the method owns state: `forward` is the student's; the method's
    parameters and buffers sit beside it under `method.` (in the optimizer, in checkpoints, in DDP).

    The step still calls the method itself after the forward: DDP's gradient hooks fire on every
    parameter that gets a gradient in backward, wherever it was used, so the method's are averaged too.
    """

    def __init__(self, student: nn.Module, method: nn.Module):
        super().__init__()
        self.student, self.method = student, method
        # DDP would broadcast rank 0's buffers before every forward: for a memory bank, N rows at every step
        # (ImageNet's CRD banks: 1.3 GB). A method keeps its buffers the same on every rank itself (CRD:
        # from all-gathered updates), so DDP leaves them alone (torch reads this attribute at wrap time).
        self._ddp_params_and_buffers_to_ignore = [f"method.{name}" for name, _ in method.named_buffers()]

    def forward(self, x: torch.Tensor):
        return self.student(x)

    def no_weight_decay(self) -> set:
        inner = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{name}" for name in inner}
