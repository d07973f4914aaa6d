"""`distill.type=hard`: DeiT's hard-label distillation (Touvron et al. 2021), cross-entropy to the
teacher's top-1 class on the distillation head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.methods.base import Method, register_method


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's top-1 class (DeiT's hard-label distillation), batch mean."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


@register_method
class Hard(Method):
    name = "hard"
    summary = "DeiT hard distillation: cross-entropy to the teacher's argmax, on the distillation head"
    paper = "Touvron et al. 2021, Training data-efficient image transformers (DeiT), ICML"

    def term(self, logits, teacher_logits, targets):
        return hard_distillation(logits, teacher_logits), {}
