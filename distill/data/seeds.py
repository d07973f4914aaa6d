"""Every random draw of a training view and step, as a pure function of where it happens.

A view is one augmented copy of one image in one epoch. Its randomness (the epoch's sample order,
the crop and flip, timm's per-sample transforms, the step's Mixup/CutMix draw, drop-path) is a
hash of (seed, epoch, view id, step), never a draw from a stream that a process carries along. So
the view a sample gets is the same on 1 or N processes, after a resume mid-epoch, and when a
teacher's logits are cached and replayed by a later run. Resume, 1-vs-N and the logit cache all
rest on this module alone; nothing else mixes seeds.

`seed` here is `data.aug_seed` (resolved to the run's `seed` when the config loads), except for
`step_torch_seed`, which draws the model's own randomness (drop-path) and follows the run's `seed`.

The constants are those every cache and checkpoint so far was written with: changing one changes
every view, and stale caches would only be caught by the live check.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # 2^32 / phi: spreads consecutive seeds over the 32-bit range
_EPOCH = 0x85EBCA77
_DRAW = 0x27D4EB2F


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


def epoch_salt(seed: int, epoch: int) -> int:
    """What every view id of an epoch is mixed with: one 32-bit number per (seed, epoch)."""
    return hash32((seed * _GOLDEN) ^ hash32(epoch * _EPOCH + 0x5BD1E995))


def view_key(view, salt):
    """The 32-bit key of a view: its id (int, or an int64 tensor of ids) mixed with the epoch's salt."""
    return hash32(view ^ salt)


def view_draws(view: torch.Tensor, salt, n: int = 3) -> torch.Tensor:
    """`n` independent uniform 32-bit draws per view, (B, n) int64, made on the views' device.

    `salt` is `epoch_salt(...)`, a Python int or a 0-d tensor (a CUDA graph's input)."""
    ids = torch.arange(1, n + 1, device=view.device) * _DRAW  # one stream per choice (dy, dx, flip)
    return hash32(view_key(view.long(), salt)[:, None] + ids[None, :])


def view_seed(seed: int, epoch: int, view: int) -> int:
    """The seed of one view's per-sample transforms (`data.crop=rrc`), the key its crop draws start from."""
    return view_key(view, epoch_salt(seed, epoch))


def seed_view_rngs(s: int) -> None:
    """Seed the three RNGs timm's per-sample transforms draw from. torch's CPU generator directly:
    `torch.manual_seed` also seeds every accelerator backend, ~90 us a call, ~1.5 % of a 224 px view."""
    random.seed(s)
    np.random.seed(s)
    torch.default_generator.manual_seed(s)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """numpy's seed for the Mixup/CutMix draws of one step (timm draws from numpy's global RNG)."""
    return hash32(seed * _GOLDEN ^ hash32(epoch * _EPOCH ^ hash32(step)))


def step_torch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """torch's seed at one training step of one process: drop-path and any other draw of the model's,
    a function of the position, so a resume replays them. `seed` is the run's init seed."""
    return hash32(seed * _GOLDEN ^ hash32(epoch * 1_000_003 + step) ^ rank)


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of an epoch (CPU int64), the same in every process."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=g)


def epoch_views(num_samples: int, seed: int, epoch: int, repeats: int = 1) -> torch.Tensor:
    """The epoch's global order of view ids: each image `repeats` times in a row, cut to N views.

    View id v = repeat x N + index, so repeats of an image get different draws; `v % N` is the image."""
    order = epoch_order(num_samples, seed, epoch)
    if repeats == 1:
        return order
    repeat = torch.arange(repeats).repeat(num_samples)  # 0, 1, .., r-1, 0, 1, ..
    return (order.repeat_interleave(repeats) + repeat * num_samples)[:num_samples]

