"""Batch augmentation on the training device: crop, flip, normalise, Mixup/CutMix on whole batches.

Every random choice for a sample (crop offset, flip) comes from `distill.data.seeds`, a hash of
(aug seed, epoch, view id), and each step's Mixup/CutMix draw from (aug seed, epoch, step).
torchvision's RandomCrop/RandomHorizontalFlip draw from the global RNG per sample on the CPU,
which is the same on neither 1 and N processes nor after a resume, hence this small module.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

from distill.data.seeds import epoch_salt, step_seed, view_draws

def crop_flip(images: torch.Tensor, draws: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Random crop of the original size from the zero-padded image, then an optional flip.

    images: uint8 (B, C, H, W); draws: (B, >=3) from `seeds.view_draws`. Returns uint8 (B, C, H, W).
    """
    B, C, H, W = images.shape
    if padding == 0 and not hflip:
        return images
    dev = images.device
    dy = draws[:, 0] % (2 * padding + 1)  # (B,) offsets into the padded image
    dx = draws[:, 1] % (2 * padding + 1)
    rows = dy[:, None] + torch.arange(H, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=dev)  # (B, W)
    if hflip:
        flip = (draws[:, 2] & 1).bool()
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(images, (padding,) * 4) if padding else images  # (B, C, H+2p, W+2p)
    b = torch.arange(B, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class Normalize(torch.nn.Module):
    """uint8 (B, C, H, W) -> float32, standardised with the dataset's mean/std (in [0, 1] units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", torch.tensor(mean).view(1, -1, 1, 1) / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():  # views normalised by the workers' transforms (data.crop=rrc)
            return images
        return images.float() * self.scale - self.shift


class BatchAugment:
    """Crop, flip, normalise, then Mixup/CutMix, on whole batches on the device. Float batches are
    views the DataLoader workers already made (`data.crop=rrc`): only Mixup/CutMix is applied.

    Mixup/CutMix parameters come from timm's own `Mixup` logic (`_params_per_batch`,
    `cutmix_bbox_and_lam`), drawn on the host from numpy's RNG seeded by (seed, epoch, step); they
    are applied with tensor ops (a per-pixel weight of each sample against the batch reversed)
    instead of timm's in-place slicing with Python ints, so that the same code runs eagerly and
    inside a CUDA graph (`distill.train.graphed`). Samples pair with the local batch reversed, as in timm.
    timm's `pair` and `elem` modes draw per pair / per sample; their parameters are one row per
    sample, applied by the same tensor ops.
    """

    def __init__(self, normalize: Normalize, padding: int, hflip: bool, num_classes: int,
                 label_smoothing: float = 0.0, mixup: Optional[Mixup] = None):
        """`mixup`: timm's `Mixup` with the run's settings (its parameters are drawn by its own logic),
        or None when the run mixes nothing (`DataConfig.mixing`)."""
        self.normalize, self.padding, self.hflip = normalize, padding, hflip
        self.num_classes, self.label_smoothing, self.mixup = num_classes, label_smoothing, mixup

    def views(self, images: torch.Tensor, index: torch.Tensor, salt) -> torch.Tensor:
        """The normalised crop/flip views of a uint8 batch (before Mixup); `salt` int or 0-d tensor."""
        if images.is_floating_point():
            return images
        return self.normalize(crop_flip(images, view_draws(index, salt), self.padding, self.hflip))

    def mix_params(self, seed: int, epoch: int, step: int, shape) -> torch.Tensor:
        """(lam, is_cutmix, y_lo, y_hi, x_lo, x_hi) for this step, float32 on the host: one row (6,)
        in `batch` mode, one per sample (B, 6) in `pair` and `elem` modes."""
        if self.mixup is None:
            return torch.tensor([1.0, 0, 0, 0, 0, 0])
        np.random.seed(step_seed(seed, epoch, step))
        if self.mixup.mode != "batch":
            return self._per_sample_params(shape)
        lam, use_cutmix = self.mixup._params_per_batch()
        box = (0, 0, 0, 0)
        if lam != 1.0 and use_cutmix:
            box, lam = cutmix_bbox_and_lam(shape, lam, ratio_minmax=self.mixup.cutmix_minmax,
                                           correct_lam=self.mixup.correct_lam)
        return torch.tensor([lam, float(use_cutmix), *box], dtype=torch.float32)

    def _per_sample_params(self, shape) -> torch.Tensor:
        """timm's `_mix_elem` / `_mix_pair` draws in timm's order: all lams, then each box in turn.
        A pair shares its draw: rows i and B-1-i are equal, so each mixes with the other."""
        pair = self.mixup.mode == "pair"
        lams, use_cutmix = self.mixup._params_per_elem(shape[0] // 2 if pair else shape[0])
        rows = []
        for lam, cut in zip(lams.tolist(), use_cutmix.tolist()):
            box = (0, 0, 0, 0)
            if lam != 1.0 and cut:
                box, lam = cutmix_bbox_and_lam(shape, lam, ratio_minmax=self.mixup.cutmix_minmax,
                                               correct_lam=self.mixup.correct_lam)
            rows.append([lam, float(cut), *box])
        params = torch.tensor(rows, dtype=torch.float32)
        return torch.cat([params, params.flip(0)]) if pair else params

    def apply(self, images, labels, index, salt, mix: torch.Tensor):
        """Views, then the mix given by `mix_params` (on the device); returns (x, targets)."""
        x = self.views(images, index, salt)
        if self.mixup is None:
            return x, labels
        if mix.dim() == 2:
            return self._apply_per_sample(x, labels, mix)
        H, W = x.shape[-2:]
        rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        in_box = (((rows >= mix[2]) & (rows < mix[3]))[:, None] & ((cols >= mix[4]) & (cols < mix[5]))[None, :])
        own = torch.where(mix[1] > 0, (~in_box).float(), mix[0].expand(H, W))  # (H, W) weight of x itself
        x = x * own + x.flip(0) * (1.0 - own)
        return x, mixup_target(labels, self.num_classes, mix[0], self.label_smoothing)

    def _apply_per_sample(self, x, labels, mix: torch.Tensor):
        """`apply` for (B, 6) parameters: each sample's own box or lam against the batch reversed."""
        H, W = x.shape[-2:]
        rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        in_rows = (rows[None] >= mix[:, 2:3]) & (rows[None] < mix[:, 3:4])  # (B, H)
        in_cols = (cols[None] >= mix[:, 4:5]) & (cols[None] < mix[:, 5:6])  # (B, W)
        in_box = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        own = torch.where(mix[:, 1, None, None] > 0, (~in_box).float(), mix[:, 0, None, None].expand(-1, H, W))
        x = x * own[:, None] + x.flip(0) * (1.0 - own[:, None])
        return x, mixup_target(labels, self.num_classes, mix[:, :1], self.label_smoothing)

    def __call__(self, images, labels, index, seed: int, epoch: int, step: int):
        """Returns (float images, targets): targets are class ids, or soft targets under Mixup."""
        mix = self.mix_params(seed, epoch, step, images.shape).to(images.device, non_blocking=True)
        return self.apply(images, labels, index, epoch_salt(seed, epoch), mix)
