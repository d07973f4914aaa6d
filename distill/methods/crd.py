"""`distill.type=crd`: contrastive representation distillation (Tian et al. 2020), as RepDistiller's
`crd/criterion.py` and `crd/memory.py`.

Both models' pre-logits features go through a linear embedding head and an l2 norm (`Embed`, 128
wide). A memory bank holds one embedding per training image for each side, by dataset index. Each
sample's student embedding is scored against the teacher bank's row of its own image (the positive)
and `crd_negatives` rows drawn uniformly (negatives), exp(<v, m> / T) / Z, and the same for the
teacher's embedding against the student bank; RepDistiller's `ContrastLoss` (NCE against the uniform
noise distribution 1/N) scores each side. The banks then move to the batch's embeddings with momentum
0.5, each row renormalised. The loss is the label term plus `crd_beta` x (student side + teacher side),
RepDistiller's `-r 1 -a 0 -b 0.8`.

State, and how it is kept across processes: the heads are parameters (gradients averaged by DDP);
the banks and the normalisers Z are buffers that every process keeps identical: each step's
update is made from the indices and embeddings of all processes (all-gathered), Z from their mean,
and the negatives are drawn for the whole global batch from a generator seeded by the step's position,
each process taking its slice. So 2 processes at batch B draw what 1 process at batch 2B draws.

Left as RepDistiller's `idx=None` path: negatives are drawn from every image (its `mode=exact`
sampling from other classes only is not done), with replacement.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.methods.base import Key, Method, register_method
from distill.methods.taps import Taps, probe

NCE_EPS = 1e-7  # RepDistiller's eps in ContrastLoss


def contrast_loss(scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """RepDistiller's `ContrastLoss`: NCE of (B, 1 + K) normalised scores, the positive first, against
    uniform noise Pn = 1 / N: -(sum log P_pos / (P_pos + K Pn) + sum log K Pn / (P_neg + K Pn)) / B."""
    k, noise = scores.shape[1] - 1, 1.0 / num_samples
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + k * noise + NCE_EPS))
    log_d0 = torch.log((k * noise) / (neg + k * noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class Embed(nn.Module):
    """A linear map to `dim_out`, then each row divided by its l2 norm (RepDistiller's `Embed`)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """The rows of every process, in rank order (the global batch's order); `t` itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ContrastMemory(nn.Module):
    """The two memory banks (N, D) and their normalisers Z, with RepDistiller's initialisation:
    uniform in [-s, s], s = 1 / sqrt(D / 3); Z = -1 until the first batch sets it."""

    def __init__(self, dim: int, num_samples: int, temperature: float, momentum: float):
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, dim).mul_(2 * stdv).add_(-stdv))  # student's
        self.register_buffer("memory_t", torch.rand(num_samples, dim).mul_(2 * stdv).add_(-stdv))  # teacher's
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z of the student side, Z of the teacher side)

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(student side, teacher side), each (B, 1 + K): exp(<v, m> / T) / Z over the `rows` (B, 1 + K) of
        the other side's bank; Z = N x the first batch's mean score over all processes."""
        n = self.memory_s.shape[0]
        out_s = torch.exp(torch.bmm(self.memory_t[rows].detach(), v_s.unsqueeze(2)).squeeze(2) / self.temperature)
        out_t = torch.exp(torch.bmm(self.memory_s[rows].detach(), v_t.unsqueeze(2)).squeeze(2) / self.temperature)
        with torch.no_grad():
            means = torch.stack([out_s.mean(), out_t.mean()])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(means)
                means /= dist.get_world_size()
            self.z.copy_(torch.where(self.z < 0, means * n, self.z))
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        """Each bank row of the global batch's images: momentum x row + (1 - momentum) x embedding, l2-normed.
        An image seen twice in the batch (`data.aug_repeats`) is updated once, from its first view."""
        index, v_s, v_t = _all_gather(index), _all_gather(v_s.detach()), _all_gather(v_t.detach())
        rows, inverse = torch.unique(index, return_inverse=True)
        first = torch.full_like(rows, len(index)).scatter_reduce_(
            0, inverse, torch.arange(len(index), device=index.device), "amin")
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            moved = bank[rows] * self.momentum + v[first] * (1 - self.momentum)
            bank.index_copy_(0, rows, moved / moved.pow(2).sum(1, keepdim=True).pow(0.5))


@register_method
class CRD(Method):
    """The heads and the memory bank are built in `setup`, once the widths and the split's size are
    known; they train and checkpoint with the student (`WithMethod`)."""

    name = "crd"
    summary = "contrastive representation distillation: embedded pre-logits, NCE against a memory bank (no token)"
    paper = "Tian et al. 2020, Contrastive representation distillation, ICLR"
    keys = {"crd_beta": Key(float, 0.8, "weight of the CRD term; the label term weighs 1 (RepDistiller: -b 0.8)",
                            min=0.0),
            "crd_dim": Key(int, 128, "width of the embeddings and the memory bank rows (RepDistiller: 128)"),
            "crd_negatives": Key(int, 4096, "negatives per sample drawn from the memory bank (RepDistiller: 16384)"),
            "crd_temperature": Key(float, 0.07, "temperature of the scores exp(<v, m> / T)"),
            "crd_momentum": Key(float, 0.5, "memory bank update: momentum x old row + (1 - momentum) x new")}
    reads = ()  # not alpha: the label term weighs 1 and CRD crd_beta, as the paper's recipe
    token = cache = topk_cache = mixup = False
    taps = needs_index = True

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.beta, self.dim, self.negatives = cfg.crd_beta, cfg.crd_dim, cfg.crd_negatives
        self.temperature, self.momentum = cfg.crd_temperature, cfg.crd_momentum
        self.position = 0  # the step's position, seeding its negatives (`set_progress`)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        d = cfg.distill
        for key in ("crd_dim", "crd_negatives", "crd_temperature"):
            if getattr(d, key) <= 0:
                raise ConfigError(f"distill.{key}={getattr(d, key)} must be > 0")
        if not 0.0 <= d.crd_momentum < 1.0:
            raise ConfigError(f"distill.crd_momentum={d.crd_momentum} must be in [0, 1)")
        if cfg.train.cuda_graphs:
            raise ConfigError("distill.type=crd updates its memory bank from a data-dependent set of rows, which a "
                              "CUDA graph cannot capture; set train.cuda_graphs=false")

    def setup(self, student, teacher, in_chans: int, img_size: int) -> None:
        s_dim = probe(student, in_chans, img_size).pre_logits.shape[-1]
        t_dim = probe(teacher, in_chans, img_size).pre_logits.shape[-1]
        self.embed_s, self.embed_t = Embed(s_dim, self.dim), Embed(t_dim, self.dim)
        self.memory = ContrastMemory(self.dim, self.num_samples, self.temperature, self.momentum)

    def set_progress(self, epochs: float) -> None:
        self.position = int(round(epochs * 2 ** 24))  # distinct for every step of every epoch; no rank in it

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K) bank rows: the image's own first, then K uniform draws. Drawn for the global batch from
        the step's position alone, this process taking its slice: every process count draws the same."""
        rank, world = _rank_world()
        gen = torch.Generator(device=index.device).manual_seed(self.position)
        b = index.shape[0]
        rows = torch.randint(0, self.num_samples, (b * world, 1 + self.negatives), generator=gen,
                             device=index.device)[rank * b:(rank + 1) * b]
        rows[:, 0] = index
        return rows

    def forward(self, outputs: Taps, targets: torch.Tensor, teacher_out: Optional[Taps] = None,
                index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`outputs`, `teacher_out`: the two models' `Taps`; `index`: (B,) dataset indices of the views."""
        if teacher_out is None or index is None:
            raise ValueError("distill.type=crd needs the teacher's Taps and the views' dataset index")
        base = self.base_criterion(outputs.logits, targets)
        v_s = self.embed_s(outputs.pre_logits.float())  # (B, dim), unit rows
        v_t = self.embed_t(teacher_out.pre_logits.float())
        out_s, out_t = self.memory.scores(v_s, v_t, self.sample(index))
        crd_s, crd_t = contrast_loss(out_s, self.num_samples), contrast_loss(out_t, self.num_samples)
        self.memory.update(v_s, v_t, index)
        distill = crd_s + crd_t
        return {"loss": base + self.beta * distill, "base": base, "distill": distill, "crd_s": crd_s, "crd_t": crd_t}
