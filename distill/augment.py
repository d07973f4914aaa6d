"""Batch augmentation on the training device, drawn per sample from (seed, epoch, index).

Every random choice for a sample (crop offset, flip) is a hash of the run's seed, the epoch and
the sample's dataset index, never a draw from a per-process stream. So the view a sample gets is
the same on 1 or N processes, after a resume mid-epoch, and when a teacher's logits are cached
and replayed later. torchvision's RandomCrop/RandomHorizontalFlip draw from the global RNG per
sample on the CPU, which gives none of that, hence this small module.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup

_MASK = 0xFFFFFFFF


def hash32(x):
    """A 32-bit integer mixer (lowbias32), on Python ints or int64 tensors.

    On tensors, products may overflow int64; they wrap modulo 2^64, so their low 32 bits stay exact.
    """
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def sample_draws(seed: int, epoch: int, index: torch.Tensor, n: int) -> torch.Tensor:
    """`n` independent uniform 32-bit draws per sample, (B, n) int64, a pure function of the inputs."""
    salt = hash32((seed * 0x9E3779B1) ^ hash32(epoch * 0x85EBCA77 + 0x5BD1E995))
    key = hash32(index.long() ^ salt)  # (B,)
    draw_ids = torch.arange(1, n + 1, device=index.device) * 0x27D4EB2F  # (n,)
    return hash32(key[:, None] + draw_ids[None, :])  # (B, n)


def crop_flip(images: torch.Tensor, draws: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Random crop of the original size from the zero-padded image, then an optional flip.

    images: uint8 (B, C, H, W); draws: (B, >=3) from `sample_draws`. Returns uint8 (B, C, H, W).
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
        return images.float() * self.scale - self.shift


class BatchAugment:
    """Crop, flip, normalise, then timm Mixup/CutMix, on whole batches on the device.

    Mixup/CutMix pairs samples within the local batch, as timm's `Mixup` does, with its
    parameters drawn from numpy's RNG, which the trainer seeds from (seed, epoch, step).
    """

    def __init__(self, normalize: Normalize, padding: int, hflip: bool, num_classes: int,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0,
                 label_smoothing: float = 0.0):
        self.normalize, self.padding, self.hflip = normalize, padding, hflip
        self.mixup: Optional[Mixup] = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)

    def views(self, images: torch.Tensor, index: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        """The normalised crop/flip views of a uint8 batch (before Mixup)."""
        draws = sample_draws(seed, epoch, index.to(images.device), 3)
        return self.normalize(crop_flip(images, draws, self.padding, self.hflip))

    def __call__(self, images, labels, index, seed: int, epoch: int, step: int):
        """Returns (float images, targets): targets are class ids, or soft targets under Mixup."""
        x = self.views(images, index, seed, epoch)
        if self.mixup is None:
            return x, labels
        # timm's Mixup draws lam and the mode from numpy's global RNG: pin it to the position.
        np.random.seed(hash32(seed * 0x9E3779B1 ^ hash32(epoch * 0x85EBCA77 ^ hash32(step))))
        return self.mixup(x, labels)
