"""Losses: one pure function per term, composed by `DistillationLoss` into a dict of terms.

DeiT semantics: the base criterion scores the class head against the labels; the distillation
term scores the distillation head (or, for a student without one, the same output) against the
teacher. The loss never owns the teacher: the trainer runs it and passes its logits in.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from distill.config import ConfigError

DISTILL_TYPES = ("none", "soft", "hard")
KL_REDUCTIONS = ("batchmean", "deit")


def soft_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
                      reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(teacher / tau) || softmax(student / tau)), reduced, times tau^2.

    The tau^2 factor keeps gradient magnitudes comparable across temperatures: the soft targets'
    gradients scale as 1/tau^2 (Hinton et al., 2015). Reduction (`distill.kl_reduction`):
    - batchmean (ours): the true per-sample KL averaged over the batch, so `alpha` weighs two
      terms of the same scale (both are per-sample nats);
    - deit: DeiT's `losses.py`, the KL summed over all B*C elements and divided by B*C (`numel`),
      i.e. batchmean / C: 1/1000 of ours on ImageNet. Choose it to reproduce DeiT's soft runs.
    """
    kl = F.kl_div(F.log_softmax(student_logits / tau, dim=-1), F.log_softmax(teacher_logits / tau, dim=-1),
                  reduction="sum", log_target=True)
    per = student_logits.numel() if reduction == "deit" else student_logits.shape[0]
    return kl / per * tau ** 2


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's top-1 class (DeiT's hard-label distillation), batch mean."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


Outputs = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class DistillationLoss(nn.Module):
    """The training loss, with or without a teacher; one code path for plain and distilled runs.

    Args:
        base_criterion: scores the class head against the (possibly soft) targets.
        distill_type: none | soft | hard.
        alpha: weight of the distillation term; the base term gets (1 - alpha).
        tau: temperature of soft distillation.
        kl_reduction: batchmean | deit, the soft term's reduction (see `soft_distillation`).
    """

    def __init__(self, base_criterion: nn.Module, distill_type: str = "none", alpha: float = 0.5, tau: float = 1.0,
                 kl_reduction: str = "batchmean"):
        super().__init__()
        if distill_type not in DISTILL_TYPES:
            raise ConfigError(f"distill.type={distill_type!r} is not one of: {', '.join(DISTILL_TYPES)}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f"distill.kl_reduction={kl_reduction!r} is not one of: {', '.join(KL_REDUCTIONS)}")
        if not 0.0 <= alpha <= 1.0 or tau <= 0:
            raise ConfigError(f"distill.alpha={alpha} must be in [0, 1] and distill.tau={tau} > 0")
        self.base_criterion = base_criterion
        self.distill_type = distill_type
        self.alpha = alpha
        self.tau = tau
        self.kl_reduction = kl_reduction

    def forward(self, outputs: Outputs, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`outputs`: logits (B, K), or (class, distillation) logits of a distilled student.

        Returns {'loss': total, 'base': label term, 'distill': teacher term (when distilling)}.
        """
        if isinstance(outputs, (tuple, list)):
            if self.distill_type == "none":
                raise ConfigError("the student returns (class, distillation) logits but distill.type=none: "
                                 "a distillation token needs a teacher; set distill.type=soft|hard or "
                                 "student.distilled=false")
            cls_logits, dist_logits = outputs
        else:
            cls_logits = dist_logits = outputs
        base = self.base_criterion(cls_logits, targets)
        if self.distill_type == "none":
            return {"loss": base, "base": base}
        if teacher_logits is None:
            raise ValueError(f"distill.type={self.distill_type} needs teacher logits: pass "
                             "teacher_logits=teacher(x) (computed under no_grad)")
        if teacher_logits.shape != dist_logits.shape:
            raise ConfigError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                             f"{tuple(dist_logits.shape)}: teacher and student need the same classes")
        teacher_logits = teacher_logits.float()  # the KL of low-precision softmaxes is noisy
        if self.distill_type == "soft":
            distill = soft_distillation(dist_logits.float(), teacher_logits, self.tau, self.kl_reduction)
        else:
            distill = hard_distillation(dist_logits, teacher_logits)
        return {"loss": (1 - self.alpha) * base + self.alpha * distill, "base": base, "distill": distill}


def build_criterion(mixup_active: bool, label_smoothing: float) -> nn.Module:
    """The base criterion on the labels.

    With Mixup/CutMix the targets are soft vectors with the smoothing already folded in by timm's
    `Mixup`, so plain soft-target cross-entropy; otherwise label-smoothed or plain cross-entropy.
    """
    if mixup_active:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()
