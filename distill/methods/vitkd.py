"""`distill.type=vitkd`: ViT feature distillation (Yang et al. 2022), as cls_KD's `ViTKDLoss`.

Both models are ViTs with the same patch grid. Their block outputs (patch tokens, before the final
norm, prefix tokens left out) are matched in two ways:

- mimicking, on the two shallowest blocks: each student block's tokens through its own linear map to
  the teacher's width, squared error to the teacher's block, summed, / B, x `vitkd_alpha`;
- generation, on the last block: the student's tokens through a linear map, a random `vitkd_mask_ratio`
  of them per image replaced by a learned mask token, then two 3x3 convolutions over the token grid
  (with a ReLU between) generate the teacher's last block; squared error on the masked tokens only,
  summed, / B, x `vitkd_beta` / `vitkd_mask_ratio`.

The loss is the label term plus both (cls_KD trains ViTKD so, with weights 3e-5 and 3e-6 for
ImageNet's 196 tokens of 384-768 channels). The maps, the mask token and the convolutions are the
method's own parameters: they train, checkpoint and resume beside the student (`WithMethod`).
Masking draws from torch's generator, which the step seeds from its position (resume replays it).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from distill.errors import ConfigError, first_line
from distill.methods.base import Key, Method, register_method
from distill.methods.taps import Taps, probe


def sum_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum()  # MSELoss(reduction="sum")


def random_mask(batch: int, tokens: int, ratio: float, device) -> torch.Tensor:
    """(B, N) mask, 1 = masked: per image, the `N - int(N (1 - ratio))` tokens of largest uniform noise."""
    keep = int(tokens * (1 - ratio))
    order = torch.argsort(torch.rand(batch, tokens, device=device), dim=1)  # ascending noise: the first are kept
    mask = torch.ones(batch, tokens, device=device)
    mask[:, :keep] = 0
    return torch.gather(mask, 1, torch.argsort(order, dim=1))  # back to token order


@register_method
class ViTKD(Method):
    name = "vitkd"
    summary = "ViT features: shallow blocks mimicked through a linear map, the last block generated from masked tokens"
    paper = "Yang et al. 2022, ViTKD: practical guidelines for ViT feature knowledge distillation, arXiv:2209.02432"
    keys = {"vitkd_alpha": Key(float, 3e-5, "weight of mimicking the two shallowest blocks (cls_KD: 0.00003)", min=0.0),
            "vitkd_beta": Key(float, 3e-6, "weight of generating the last block (cls_KD: 0.000003)", min=0.0),
            "vitkd_mask_ratio": Key(float, 0.5, "share of the last block's tokens masked before generation (lambda)")}
    reads = ()  # not alpha: the label term weighs 1, as cls_KD's
    token = cache = topk_cache = False
    taps = True
    student_layers = teacher_layers = (0, 1, -1)  # the two shallowest blocks and the last
    layer_fmt = "NLC"

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.vitkd_alpha, self.vitkd_beta, self.ratio = cfg.vitkd_alpha, cfg.vitkd_beta, cfg.vitkd_mask_ratio

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if not 0.0 < cfg.distill.vitkd_mask_ratio < 1.0:
            raise ConfigError(f"distill.vitkd_mask_ratio={cfg.distill.vitkd_mask_ratio} must be in (0, 1)")

    def setup(self, student, teacher, in_chans: int, img_size: int) -> None:
        try:
            s, t = probe(student, in_chans, img_size).layers, probe(teacher, in_chans, img_size).layers
        except (AssertionError, RuntimeError, ValueError, TypeError) as e:  # a CNN has no token layout
            raise ConfigError(f"distill.type=vitkd matches ViT tokens: student and teacher must both be ViTs "
                              f"({first_line(e)})") from None
        (n_s, d_s), (n_t, d_t) = s[-1].shape[1:], t[-1].shape[1:]
        if n_s != n_t or math.isqrt(n_s) ** 2 != n_s:
            raise ConfigError(f"distill.type=vitkd needs the same square patch grid in student and teacher: the "
                              f"student has {n_s} patch tokens, the teacher {n_t}; set teacher.img_size or "
                              "student.patch_size so that they agree")
        self.align_low = nn.ModuleList([nn.Linear(d_s, d_t) for _ in range(2)]) if d_s != d_t else None
        self.align_high = nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_t))
        self.generation = nn.Sequential(nn.Conv2d(d_t, d_t, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(d_t, d_t, 3, padding=1))

    def mimic(self, low_s, low_t) -> torch.Tensor:
        """Sum over the two shallow blocks of the squared error, / B, x vitkd_alpha."""
        b = low_s[0].shape[0]
        maps = self.align_low if self.align_low is not None else [nn.Identity(), nn.Identity()]
        return sum(sum_squared(m(s), t) for m, s, t in zip(maps, low_s, low_t)) / b * self.vitkd_alpha

    def generate(self, high_s: torch.Tensor, high_t: torch.Tensor) -> torch.Tensor:
        """Squared error of the generated last block on the masked tokens, / B, x vitkd_beta / ratio."""
        x = self.align_high(high_s)  # (B, N, D_t)
        b, n, d = x.shape
        mask = random_mask(b, n, self.ratio, x.device).unsqueeze(-1)  # (B, N, 1)
        x = x * (1 - mask) + self.mask_token.expand(b, n, d) * mask  # masked tokens become the mask token
        side = math.isqrt(n)
        x = self.generation(x.transpose(1, 2).reshape(b, d, side, side)).flatten(2).transpose(1, 2)
        return sum_squared(x * mask, high_t * mask) / b * self.vitkd_beta / self.ratio

    def forward(self, outputs: Taps, targets: torch.Tensor,
                teacher_out: Optional[Taps] = None) -> Dict[str, torch.Tensor]:
        if teacher_out is None:
            raise ValueError("distill.type=vitkd needs the teacher's Taps")
        base = self.base_criterion(outputs.logits, targets)
        s, t = [x.float() for x in outputs.layers], [x.float() for x in teacher_out.layers]
        mimic, generate = self.mimic(s[:2], t[:2]), self.generate(s[2], t[2])
        distill = mimic + generate
        return {"loss": base + distill, "base": base, "distill": distill, "vitkd_mimic": mimic,
                "vitkd_generate": generate}
