"""Losses: one pure function per term, composed by `DistillationLoss` into a dict of terms.

DeiT semantics: the base criterion scores the class head against the labels; the distillation
term scores the distillation head (or, for a student without one, the same output) against the
teacher. The loss never owns the teacher: the trainer runs it and passes its logits in.

Methods (`distill.type`): soft and hard (DeiT), kd (Hinton et al. 2015), dkd (Zhao et al. 2022),
feature (pooled intermediate features through a learned projection; `distill.features`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from distill.config import DISTILL_TYPES, ConfigError, DistillConfig
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


def kd_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Classic KD (Hinton et al., 2015): KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2.

    The formula is `soft_distillation` with batchmean reduction: on a student without a distillation
    token `soft` computes exactly this number. What makes `kd` its own method is where and how it
    is applied, fixed rather than configurable: the single class head of a student WITHOUT a
    distillation token learns both the labels and the teacher (DistillationLoss refuses a token),
    always with the per-sample (batchmean) KL, and its recipe (`kd_tiny.yaml`) uses Hinton's
    regime, tau=4 and alpha=0.9, against soft's DeiT regime (token, tau=3, alpha=0.1). It is the
    classic baseline a study puts beside DeiT's token.
    """
    return soft_distillation(student_logits, teacher_logits, tau, "batchmean")  # batch mean, times tau^2


DKD_MASK = 1000.0  # subtracted from the target logit / tau: exp(-1000) is 0 in float32 (mdistiller's constant)


def _binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log [p_target, p_non-target] of softmax(z), (B, 2), computed without log(0)."""
    target = z.masked_fill(~gt, -math.inf).logsumexp(-1)  # (B,) = z_y
    rest = z.masked_fill(gt, -math.inf).logsumexp(-1)  # (B,) log sum_{k != y} exp(z_k)
    return torch.stack([target, rest], dim=-1).log_softmax(-1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022): (TCKD, NCKD), each a batch-mean KL at tau, times tau^2.

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


def feature_distillation(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's projected features and the teacher's, (B, C) each,
    averaged over batch and channels (timm's `FeatureDistillationTask`)."""
    return F.mse_loss(student_features.float(), teacher_features.float())


def class_ids(targets: torch.Tensor) -> torch.Tensor:
    """Class ids from targets: (B,) ids as they are; (B, K) soft vectors (Mixup/CutMix, with their
    smoothing) by their argmax, i.e. the class holding the larger share of the mix."""
    return targets.argmax(dim=-1) if targets.dim() == 2 else targets


Outputs = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class DistillationLoss(nn.Module):
    """The training loss, with or without a teacher; one code path for plain and distilled runs.

    The total is (1 - alpha) * base + alpha * distill for every distilling type. For dkd,
    distill = dkd_alpha * TCKD + dkd_beta * NCKD (the paper's CE + DKD is alpha = 0.5, up to a
    factor 2 on the whole loss); the paper's warm-up of the DKD weight over the first epochs is
    left out (the learning-rate warm-up already softens the first steps). dkd reads the labels
    from `targets`: their argmax under Mixup/CutMix (see `class_ids`).

    Args:
        base_criterion: scores the class head against the (possibly soft) targets.
        distill_type: none | soft | hard | kd | dkd | feature. kd and feature need a student without a
            distillation token; soft, hard and dkd act on the distillation head when there is one (DeiT).
            feature takes (logits, projected features) from `FeatureStudent` and the teacher's pooled
            features in place of its logits.
        alpha: weight of the distillation term; the base term gets (1 - alpha).
        tau: temperature of soft, kd and dkd.
        kl_reduction: batchmean | deit, the soft term's reduction (see `soft_distillation`).
        dkd_alpha, dkd_beta: DKD's weights of TCKD and NCKD (the paper's CIFAR-100 values: 1 and 8).
    """

    def __init__(self, base_criterion: nn.Module, distill_type: str = "none", alpha: float = 0.5, tau: float = 1.0,
                 kl_reduction: str = "batchmean", dkd_alpha: float = 1.0, dkd_beta: float = 8.0):
        super().__init__()
        if distill_type not in DISTILL_TYPES:
            raise ConfigError(f"distill.type={distill_type!r} is not one of: {', '.join(DISTILL_TYPES)}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f"distill.kl_reduction={kl_reduction!r} is not one of: {', '.join(KL_REDUCTIONS)}")
        if not 0.0 <= alpha <= 1.0 or tau <= 0:
            raise ConfigError(f"distill.alpha={alpha} must be in [0, 1] and distill.tau={tau} > 0")
        if dkd_alpha < 0 or dkd_beta < 0:
            raise ConfigError(f"distill.dkd_alpha={dkd_alpha} and distill.dkd_beta={dkd_beta} must be >= 0")
        self.base_criterion = base_criterion
        self.distill_type = distill_type
        self.alpha = alpha
        self.tau = tau
        self.kl_reduction = kl_reduction
        self.dkd_alpha, self.dkd_beta = dkd_alpha, dkd_beta

    @classmethod
    def from_config(cls, base_criterion: nn.Module, cfg: DistillConfig) -> "DistillationLoss":
        return cls(base_criterion, cfg.type, cfg.alpha, cfg.tau, cfg.kl_reduction, cfg.dkd_alpha, cfg.dkd_beta)

    def forward(self, outputs: Outputs, targets: torch.Tensor,
                teacher_logits: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`outputs`: logits (B, K), or (class, distillation) logits of a distilled student.

        Returns {'loss': total, 'base': label term, 'distill': teacher term (when distilling)}, and the
        teacher term's parts: 'kd' for kd, 'dkd_tckd' and 'dkd_nckd' (unweighted) for dkd.
        """
        if self.distill_type == "feature":  # (logits, projected features) from `FeatureStudent`
            cls_logits, features = outputs
            base = self.base_criterion(cls_logits, targets)
            if teacher_logits is None:
                raise ValueError("distill.type=feature needs the teacher's features: pass them as teacher_logits")
            distill = feature_distillation(features, teacher_logits)
            return {"loss": (1 - self.alpha) * base + self.alpha * distill, "base": base, "distill": distill}
        if isinstance(outputs, (tuple, list)):
            if self.distill_type in ("none", "kd"):
                why = ("a distillation token needs a teacher; set distill.type=soft|hard|dkd"
                       if self.distill_type == "none" else "kd is classic single-head KD; use distill.type=soft "
                       "for DeiT's distillation head")
                raise ConfigError(f"the student returns (class, distillation) logits but distill.type="
                                  f"{self.distill_type}: {why}, or set student.distilled=false")
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
        terms = {}
        if self.distill_type == "soft":
            distill = soft_distillation(dist_logits.float(), teacher_logits, self.tau, self.kl_reduction)
        elif self.distill_type == "hard":
            distill = hard_distillation(dist_logits, teacher_logits)
        elif self.distill_type == "kd":
            distill = terms["kd"] = kd_distillation(dist_logits.float(), teacher_logits, self.tau)
        else:
            tckd, nckd = dkd_terms(dist_logits.float(), teacher_logits, class_ids(targets), self.tau)
            terms = {"dkd_tckd": tckd, "dkd_nckd": nckd}
            distill = self.dkd_alpha * tckd + self.dkd_beta * nckd
        return {"loss": (1 - self.alpha) * base + self.alpha * distill, "base": base, "distill": distill, **terms}


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
