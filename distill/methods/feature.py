"""Feature distillation (`distill.type=feature`): a student feature matched by mean squared error to
a teacher feature, in one of two ways (`distill.feature_match`):

- `pre_logits`, timm's `FeatureDistillationTask`: each model's pooled pre-logits features,
  `forward_head(forward_features(x), pre_logits=True)` (for our ViT the final-norm class token, for
  a CNN its globally pooled last stage), through a linear projection only when the widths differ.
- `block`, a FitNet-style hint (Romero et al. 2015) at the pooled level: a student block's output
  before the final norm, averaged over its patch tokens, always through a learned projection, matched
  to a teacher intermediate averaged over space (`feature_layer`, `teacher_feature_layer`; both from
  timm's `forward_intermediates`, so any layer of any timm teacher can be the target).

The projection is a module of its own, trained beside the student: `FeatureStudent` holds both, so
the optimizer, Accelerate's checkpoints and resume see it like any other weight, while the bare
student (without it) is what is evaluated, averaged and exported.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
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
        student: a timm-style model with `forward_features` and `forward_head` (and, for a block,
            `forward_intermediates`).
        layer: the student's intermediate to match: a block index (negative from the end), its output
            before the final norm, patch tokens averaged (prefix tokens left out); None: the pooled
            pre-logits features, projected only if their width is not the teacher's (timm's rule).
        teacher_dim: channels of the teacher's pooled features, the projection's output.
        in_chans, img_size: the input, for the one forward that measures the student's width.
    """

    def __init__(self, student: nn.Module, layer: Optional[int], teacher_dim: int, in_chans: int, img_size: int):
        super().__init__()
        self.student, self.layer = student, layer
        was_training = student.training
        student.eval()  # no drop-path draws: the probe leaves the random streams as they were
        with torch.no_grad():  # the width of the student's intermediate, from one forward of a zero image
            probe = torch.zeros(1, in_chans, img_size, img_size, device=next(student.parameters()).device)
            student_dim = self._features(probe)[1].shape[-1]
        student.train(was_training)
        same = layer is None and student_dim == teacher_dim
        self.projection = nn.Identity() if same else nn.Linear(student_dim, teacher_dim)

    def _features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.layer is None:
            tokens = self.student.forward_features(x)
            return self.student.forward_head(tokens), self.student.forward_head(tokens, pre_logits=True)
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
    """The frozen teacher's pooled intermediate `layer` (None: its pooled pre-logits features), (B, C_t):
    the feature term's target."""

    def __init__(self, teacher: nn.Module, layer: Optional[int]):
        super().__init__()
        self.teacher, self.layer = teacher, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self.teacher.pre_logits(x)
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
    summary = "pooled features matched by MSE: timm's pre-logits, or a block through a projection (no token)"
    paper = ("pre_logits: timm's FeatureDistillationTask; block: Romero et al. 2015, FitNets: hints for thin "
             "deep nets, ICLR (pooled)")
    keys = {"feature_match": Key(str, "block", "pre_logits: timm's FeatureDistillationTask | block: a pooled "
                                               "block through a projection (FitNet-style)",
                                 choices=("block", "pre_logits")),
            "feature_layer": Key(int, -1, "feature_match=block: the student block whose pooled tokens are matched "
                                          "(negative: from the end)"),
            "teacher_feature_layer": Key(int, -1, "feature_match=block: the teacher's intermediate (timm "
                                                  "forward_intermediates index)")}
    token = cache = topk_cache = False

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        block = cfg.feature_match == "block"
        self.layer = cfg.feature_layer if block else None
        self.teacher_layer = cfg.teacher_feature_layer if block else None

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        d = cfg.distill
        if d.feature_match != "block" and (d.feature_layer, d.teacher_feature_layer) != (-1, -1):
            raise ConfigError(f"distill.feature_layer / teacher_feature_layer choose blocks for feature_match=block; "
                              f"feature_match={d.feature_match} matches the pre-logits features: remove them")

    def wrap(self, student, teacher, in_chans: int, img_size: int, num_samples: int = 0):
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
