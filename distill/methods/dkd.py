"""`distill.type=dkd`: decoupled knowledge distillation (Zhao et al. 2022), the KL split into a
target-vs-rest term (TCKD) and an among-non-targets term (NCKD), weighted separately."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from distill.methods.base import Key, Method, class_ids, register_method

DKD_MASK = 1000.0  # subtracted from the target logit / tau: exp(-1000) is 0 in float32 (mdistiller's constant)


def _binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log [p_target, p_non-target] of softmax(z), (B, 2), computed without log(0)."""
    target = z.masked_fill(~gt, -math.inf).logsumexp(-1)  # (B,) = z_y
    rest = z.masked_fill(gt, -math.inf).logsumexp(-1)  # (B,) log sum_{k != y} exp(z_k)
    return torch.stack([target, rest], dim=-1).log_softmax(-1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch-mean KL at tau, times tau^2.

    TCKD: KL over the binary (target, non-target) probabilities of softmax(logits / tau).
    NCKD: KL over the non-target classes' renormalised distribution: the target logit is masked by
    subtracting `DKD_MASK` before the softmax, so it carries probability 0 (in float32) in both.
    The tau^2 factor keeps gradient scales comparable across temperatures, as in `soft_distillation`.

    Args:
        target: the ground-truth class per sample, (B,) class ids.
    """
    gt = target[:, None] == torch.arange(student_logits.shape[-1], device=target.device)  # (B, K) bool, no sync
    zs, zt = student_logits / tau, teacher_logits / tau
    # reduction="batchmean": the KL summed over the classes (2 for TCKD), averaged over the batch
    tckd = F.kl_div(_binary_log_probs(zs, gt), _binary_log_probs(zt, gt), reduction="batchmean",
                    log_target=True) * tau ** 2
    nckd = F.kl_div((zs - DKD_MASK * gt).log_softmax(-1), (zt - DKD_MASK * gt).log_softmax(-1),
                    reduction="batchmean", log_target=True) * tau ** 2
    return tckd, nckd


@register_method
class DKD(Method):
    """The teacher's term is warm-up x (dkd_alpha * TCKD + dkd_beta * NCKD); the paper's CE + DKD is
    alpha = 0.5, up to a factor 2 on the whole loss.

    Warm-up (`dkd_warmup`, in epochs; 0 = none): mdistiller scales DKD by min(epoch / warmup, 1), with
    the epoch counted from 1 and stepped once per epoch (its CIFAR setting: 20 of 240 epochs). Here the
    weight ramps per step, min(epochs done / warmup, 1) with the current step counted as done, so it
    reaches mdistiller's value e / warmup at the end of epoch e. The weight lives in a buffer that
    `set_progress` fills in place, so a CUDA graph replays the current value.

    The target/non-target split needs one class per image: Mixup/CutMix are refused (a mixed image
    holds two classes, and the argmax of its target would make the other a "non-target")."""

    name = "dkd"
    summary = "decoupled KD: dkd_alpha x TCKD (target vs rest) + dkd_beta x NCKD (among non-targets)"
    paper = "Zhao et al. 2022, Decoupled knowledge distillation, CVPR"
    keys = {"dkd_alpha": Key(float, 1.0, "weight of TCKD, the target-vs-rest term", min=0.0),
            "dkd_beta": Key(float, 8.0, "weight of NCKD, the among-non-targets term (paper: 8 on CIFAR-100)",
                            min=0.0),
            "dkd_warmup": Key(float, 0.0, "epochs over which the DKD weight ramps from 0 to 1 (mdistiller: 20 of "
                                          "240 on CIFAR-100); 0: none", min=0.0)}
    reads = ("alpha", "tau", "standardize")
    mixup = False

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.tau, self.dkd_alpha, self.dkd_beta, self.warmup = cfg.tau, cfg.dkd_alpha, cfg.dkd_beta, cfg.dkd_warmup
        self.register_buffer("warmup_weight", torch.ones(()), persistent=False)  # progress, not state: not saved

    def set_progress(self, epochs: float) -> None:
        if self.warmup > 0:
            self.warmup_weight.fill_(min(epochs / self.warmup, 1.0))

    def term(self, logits, teacher_logits, targets):
        tckd, nckd = dkd_terms(logits, teacher_logits, class_ids(targets), self.tau)
        return (self.warmup_weight * (self.dkd_alpha * tckd + self.dkd_beta * nckd),
                {"dkd_tckd": tckd, "dkd_nckd": nckd, "dkd_warmup": self.warmup_weight})
