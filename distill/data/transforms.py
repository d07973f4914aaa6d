"""Per-sample image transforms for real images (`data.crop=rrc`), built by timm, seeded per view.

The train transform is timm's own `create_transform(is_training=True)`: RandomResizedCrop, flip,
AutoAugment / RandAugment / AugMix / DeiT III's 3-Augment by timm's config string, colour jitter,
normalisation and random erasing (TrivialAugment, which timm lacks, comes from torchvision). The
eval transform is timm's resize by `crop_pct`, then centre crop.

timm's transforms draw from Python's `random`, numpy's global RNG and torch's. `TrainViews` seeds
all three from `distill.data.seeds.view_seed(aug seed, epoch, view id)` before each sample, so a
view is a pure function of those: the same in 1 or N processes, with any number of workers, after a
resume, and when cached teacher logits are replayed.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image, ImageOps
from timm.data import auto_augment as aa
from timm.data import create_transform
from torchvision import transforms as T

from distill.data.seeds import seed_view_rngs, view_seed
from distill.errors import ConfigError

if TYPE_CHECKING:  # type hints only: the config imports this module to check auto-augment strings
    from distill.config import DataConfig

TRIVIAL = "trivialaugment"


def check_auto_augment(spec: str) -> None:
    """Raise ConfigError unless timm (or torchvision, for `trivialaugment`) understands `spec` whole.

    timm asserts on unknown `key<number>` sections but silently skips sections without a number
    (`rand-m9-xyz`) and unknown RandAugment sets (`rand-txyz`): both are errors here.
    """
    if spec == TRIVIAL:
        return
    head, *sections = spec.split("-")
    bad = None
    for s in sections:
        if head == "rand" and s.startswith("t"):
            default = aa.rand_augment_choices("", increasing=True)  # what timm falls back to for a name it lacks
            bad = bad or (s if aa.rand_augment_choices(s[1:], increasing=True) is default else None)
        elif not re.fullmatch(r"[a-z]+\d[\d.]*", s):
            bad = bad or s
    try:
        builder = {"rand": aa.rand_augment_transform, "augmix": aa.augment_and_mix_transform}.get(
            head, aa.auto_augment_transform)
        builder(spec, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError) as e:
        bad = bad or str(e) or spec
    if bad:
        raise ConfigError(f"data.auto_augment={spec!r}: timm does not understand {bad!r}; use a timm string such as "
                          f"rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0, original, 3a, or {TRIVIAL}")


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, for Pillow >= 13. timm's 'PosterizeIncreasing' keeps "4 down to 0" bits, so
    RandAugment's top magnitudes (>= 9.75, reached through `mstd`) ask for 0 bits; Pillow < 13 gave a
    black image for that and Pillow 13 raises ValueError. We give the black image, as the DeiT/timm
    runs that these recipes reproduce did."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def guard_posterize(transform) -> int:
    """Swap `posterize` into every timm AugmentOp of `transform` (a timm auto-augment object or a
    Compose of them) whose op is timm's posterize; returns how many were swapped."""
    swapped = 0
    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", [])) + [op for sub in getattr(t, "policy", []) for op in sub]
        for op in ops:
            if getattr(op, "aug_fn", None) is aa.posterize:
                op.aug_fn, swapped = posterize, swapped + 1
    return swapped


def train_transform(cfg: "DataConfig", mean: Sequence[float], std: Sequence[float]):
    """PIL image -> normalised float (C, S, S): timm's training transform for the data.* keys."""
    trivial = cfg.auto_augment == TRIVIAL
    jitter = None if trivial or cfg.color_jitter == 0 else cfg.color_jitter  # timm also drops it under AA
    primary, secondary, final = create_transform(
        cfg.img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=0.5 if cfg.hflip else 0.0, color_jitter=jitter, auto_augment=None if trivial else cfg.auto_augment,
        interpolation=cfg.interpolation, mean=tuple(mean), std=tuple(std), re_prob=cfg.reprob,
        re_mode=cfg.remode, re_count=cfg.recount, separate=True)
    if trivial:
        interp = T.InterpolationMode.BILINEAR if cfg.interpolation == "random" else T.InterpolationMode(cfg.interpolation)
        secondary = T.Compose([T.TrivialAugmentWide(interpolation=interp)])
    guard_posterize(secondary)
    return T.Compose([*primary.transforms, *secondary.transforms, *final.transforms])


def eval_transform(cfg: "DataConfig", mean: Sequence[float], std: Sequence[float]):
    """PIL image -> normalised float (C, S, S): resize to S / crop_pct, centre crop S (timm's eval)."""
    interp = "bilinear" if cfg.interpolation == "random" else cfg.interpolation
    return create_transform(cfg.img_size, is_training=False, interpolation=interp, mean=tuple(mean),
                            std=tuple(std), crop_pct=cfg.crop_pct)


class TrainViews(torch.utils.data.Dataset):
    """Training views of a split: key (view id, epoch) -> (float image, label, view id).

    View id v = repeat x N + index (`distill.data.seeds.epoch_views`), so repeats of an image differ.
    `split` is any source with `pil(i)` and `label(i)` (`distill.data.splits`).
    """

    keyed = True  # receives (view, epoch) keys from `distill.data.loader.LoaderBatches`

    def __init__(self, split, transform, seed: int):
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        view, epoch = key
        i = view % len(self.split)
        image = self.split.pil(i)
        seed_view_rngs(view_seed(self.seed, epoch, view))
        return self.transform(image), self.split.label(i), view


class EvalViews(torch.utils.data.Dataset):
    """Evaluation views: index -> (float image, label, index); deterministic, no seeding needed."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.pil(i)), self.split.label(i), i
