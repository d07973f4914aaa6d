"""`distill.type=none`: the student on the labels alone, the baseline every method is compared with."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from distill.methods.base import Method, Outputs, register_method


@register_method
class Plain(Method):
    name = "none"
    summary = "no teacher: the label term alone (the plain baseline)"
    reads = ()
    needs_teacher = token = cache = topk_cache = False

    def forward(self, outputs: Outputs, targets: torch.Tensor,
                teacher_out: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if isinstance(outputs, (tuple, list)):
            raise ValueError("the student returns (class, distillation) logits but distill.type=none has no "
                             "teacher for the distillation head: set student.distilled=false")
        base = self.base_criterion(outputs, targets)
        return {"loss": base, "base": base}
