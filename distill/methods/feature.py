"""Feature distillation (`distill.type=feature`): the student's pooled intermediate tokens, through a
learned linear projection, matched to the teacher's pooled intermediate features (a FitNet-style
hint, Romero et al. 2015, at the pooled level of timm's `FeatureDistillationTask`).

Both sides come from timm's `forward_intermediates`, so any layer of any timm teacher can be the
target. The projection is a module of its own, trained beside the student: `FeatureStudent` holds
both, so the optimizer, Accelerate's checkpoints and resume see it like any other weight, while
the bare student (without it) is what is evaluated, averaged and exported.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from distill.methods.base import Key, Method, Outputs, register_method


def feature_distillation(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's projected features and the teacher's, (B, C) each,
    averaged over batch and channels (timm's `FeatureDistillationTask`)."""
    return F.mse_loss(student_features.float(), teacher_features.float())


def _pooled(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


class FeatureStudent(nn.Module):
    """The student plus its projection; forward returns (logits, projected features).

    Args:
        student: a timm-style model with `forward_intermediates` and `forward_head`.
        layer: the student's intermediate to match: a block index (negative from the end), its output
            before the final norm, patch tokens averaged (prefix tokens left out).
        teacher_dim: channels of the teacher's pooled features, the projection's output.
        in_chans, img_size: the input, for the one forward that measures the student's width.
    """

    def __init__(self, student: nn.Module, layer: int, teacher_dim: int, in_chans: int, img_size: int):
        super().__init__()
        self.student, self.layer = student, layer
        was_training = student.training
        student.eval()  # no drop-path draws: the probe leaves the random streams as they were
        with torch.no_grad():  # the width of the student's intermediate, from one forward of a zero image
            probe = torch.zeros(1, in_chans, img_size, img_size, device=next(student.parameters()).device)
            student_dim = self._features(probe)[1].shape[-1]
        student.train(was_training)
        self.projection = nn.Linear(student_dim, teacher_dim)

    def _features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        final, (inter,) = self.student.forward_intermediates(x, indices=[self.layer])
        return self.student.forward_head(final), _pooled(inter)  # logits (B, K), (B, D)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (logits (B, K), projected pooled features (B, teacher_dim))."""
        logits, features = self._features(x)
        return logits, self.projection(features)

    def no_weight_decay(self) -> set:
        inner = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{name}" for name in inner}


class TeacherFeatures(nn.Module):
    """The frozen teacher's pooled intermediate `layer`, (B, C_t): the feature term's target."""

    def __init__(self, teacher: nn.Module, layer: int):
        super().__init__()
        self.teacher, self.layer = teacher, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.pooled_features(x, self.layer)

    def width(self, in_chans: int, img_size: int) -> int:
        """Channels of the pooled features, from one forward of a zero image."""
        device = next(self.teacher.parameters()).device
        return self(torch.zeros(1, in_chans, img_size, img_size, device=device)).shape[-1]


@register_method
class Feature(Method):
    """The student trains wrapped in `FeatureStudent` (its projection checkpoints and resumes with
    it); the step runs `TeacherFeatures` instead of the teacher's classifier."""

    name = "feature"
    summary = "pooled intermediate features through a learned projection, matched by MSE (no token)"
    paper = "Romero et al. 2015, FitNets: hints for thin deep nets, ICLR (pooled, as timm's FeatureDistillationTask)"
    keys = {"feature_layer": Key(int, -1, "the student block whose pooled tokens are matched (negative: from the end)"),
            "teacher_feature_layer": Key(int, -1, "the teacher's intermediate (timm forward_intermediates index)")}
    token = cache = topk_cache = False

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.layer, self.teacher_layer = cfg.feature_layer, cfg.teacher_feature_layer

    def wrap(self, student, teacher, in_chans: int, img_size: int):
        features = TeacherFeatures(teacher, self.teacher_layer)
        return FeatureStudent(student, self.layer, features.width(in_chans, img_size), in_chans, img_size), features

    def forward(self, outputs: Outputs, targets: torch.Tensor,
                teacher_out: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`outputs`: (logits, projected features) from `FeatureStudent`; `teacher_out`: the teacher's
        pooled features from `TeacherFeatures`."""
        cls_logits, features = outputs
        base = self.base_criterion(cls_logits, targets)
        if teacher_out is None:
            raise ValueError("distill.type=feature needs the teacher's pooled features: pass teacher_out")
        distill = feature_distillation(features, teacher_out)
        return {"loss": (1 - self.alpha) * base + self.alpha * distill, "base": base, "distill": distill}
