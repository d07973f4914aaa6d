"""`distill.type=kd`: classic knowledge distillation (Hinton et al. 2015) on a single-head student."""
from __future__ import annotations

import torch

from distill.methods.base import Method, register_method
from distill.methods.soft import soft_distillation


def kd_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Classic KD (Hinton et al., 2015): KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2.

    The formula is `soft_distillation` with batchmean reduction: on a student without a distillation
    token `soft` computes exactly this number. What makes `kd` its own method is where and how it
    is applied, fixed rather than configurable: the single class head of a student WITHOUT a
    distillation token learns both the labels and the teacher, always with the per-sample
    (batchmean) KL, and its recipe (`kd_tiny.yaml`) uses Hinton's regime, tau=4 and alpha=0.9,
    against soft's DeiT regime (token, tau=3, alpha=0.1). It is the classic baseline a study puts
    beside DeiT's token.
    """
    return soft_distillation(student_logits, teacher_logits, tau, "batchmean")  # batch mean, times tau^2


@register_method
class KD(Method):
    name = "kd"
    summary = "classic KD: KL to the teacher's softmax at tau, on the one class head (no token)"
    paper = "Hinton et al. 2015, Distilling the knowledge in a neural network, arXiv:1503.02531"
    reads = ("alpha", "tau", "standardize")
    token = False

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.tau = cfg.tau

    def term(self, logits, teacher_logits, targets):
        kd = kd_distillation(logits, teacher_logits, self.tau)  # fp32: the base casts both
        return kd, {"kd": kd}
