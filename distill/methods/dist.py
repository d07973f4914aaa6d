"""`distill.type=dist`: DIST (Huang et al. 2022), the student's softmax matched to the teacher's by
Pearson correlation, across the classes of each sample (inter-class) and across the batch for each
class (intra-class), instead of by KL: only the relations are kept, not the exact probabilities."""
from __future__ import annotations

from typing import Tuple

import torch

from distill.methods.base import Key, Method, register_method

DIST_EPS = 1e-8  # the reference code's eps (hunto/DIST_KD), added to the product of the norms


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of a and b (N, M) -> (N,): the cosine of the mean-centred rows.

    A constant row has norm 0 and correlation 0 (the eps). As for any correlation, the gradient grows
    as 1 / |a - mean(a)|: a student row of exactly equal logits gets gradients of order 1 / eps.
    """
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + DIST_EPS)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - the batch mean of the per-sample correlation over the classes; y_s, y_t: (B, K) probabilities."""
    return 1 - pearson(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - the class mean of the per-class correlation over the batch: the same on (K, B)."""
    return inter_class_relation(y_s.t(), y_t.t())


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) on softmax(logits / tau), each times tau^2 as in the paper's code (it keeps
    gradient scales comparable across temperatures, as in `soft_distillation`)."""
    y_s, y_t = (student_logits / tau).softmax(-1), (teacher_logits / tau).softmax(-1)  # (B, K)
    return tau ** 2 * inter_class_relation(y_s, y_t), tau ** 2 * intra_class_relation(y_s, y_t)


@register_method
class DIST(Method):
    """The teacher's term is dist_beta * inter + dist_gamma * intra. The paper's ImageNet setting,
    CE + inter + intra at tau = 1, is alpha = 0.5 with dist_beta = dist_gamma = 1, up to a factor 2
    on the whole loss; its CIFAR-100 setting is tau = 4, dist_beta = dist_gamma = 2. The labels are
    not used, so Mixup/CutMix targets only reach the label term. The intra term correlates across
    the batch, so it depends on the batch (per process under DDP, as in the reference code) and
    is tau^2 exactly (correlation 0) for a batch of one sample."""

    name = "dist"
    summary = "DIST: Pearson correlation with the teacher's softmax at tau, per sample (inter) and per class (intra)"
    paper = "Huang et al. 2022, Knowledge distillation from a stronger teacher, NeurIPS"
    keys = {"dist_beta": Key(float, 1.0, "weight of the inter-class term (per-sample correlation over classes)",
                             min=0.0),
            "dist_gamma": Key(float, 1.0, "weight of the intra-class term (per-class correlation over the batch)",
                              min=0.0)}
    reads = ("alpha", "tau", "standardize")

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.tau, self.dist_beta, self.dist_gamma = cfg.tau, cfg.dist_beta, cfg.dist_gamma

    def term(self, logits, teacher_logits, targets):
        inter, intra = dist_terms(logits.float(), teacher_logits, self.tau)
        return self.dist_beta * inter + self.dist_gamma * intra, {"dist_inter": inter, "dist_intra": intra}
