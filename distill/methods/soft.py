"""`distill.type=soft`: DeiT's soft distillation (Touvron et al. 2021), a KL to the teacher's
softened distribution on the distillation head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.methods.base import Key, Method, register_method


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


@register_method
class Soft(Method):
    name = "soft"
    summary = "DeiT soft distillation: KL to the teacher's softmax at tau, on the distillation head"
    paper = "Touvron et al. 2021, Training data-efficient image transformers (DeiT), ICML"
    keys = {"kl_reduction": Key(str, "batchmean", "batchmean: per-sample KL | deit: DeiT's sum / (B x classes)",
                                choices=("batchmean", "deit"))}
    reads = ("alpha", "tau", "standardize")

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.tau, self.kl_reduction = cfg.tau, cfg.kl_reduction

    def term(self, logits, teacher_logits, targets):
        return soft_distillation(logits, teacher_logits, self.tau, self.kl_reduction), {}
