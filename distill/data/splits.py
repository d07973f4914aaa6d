"""What a data source returns: a whole split in memory (`ImageSplit`) or one decoded per item
(`StreamedSplit`), and the rules every source shares (fitting to img_size, subsets).

Fitting to S = `img_size`: an image no larger than S on both sides is zero-padded, centred (the
MNIST convention: 28 -> 32 adds 2 px each side); any other image has its shorter side resized to S
(bilinear, antialiased, on float, rounded back to uint8) and is then centre-cropped to S x S.

`train_subset` / `test_subset` keep N images chosen by a fixed permutation (`subset_indices`), so a subset is
class-balanced in expectation and the same in every process and run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from distill.errors import DataError

if TYPE_CHECKING:  # type hints only: the config imports the sources to list them
    from distill.config import DataConfig

GRAY_MODES = {"1", "L", "LA"}


@dataclass
class ImageSplit:
    """A whole split in memory: uint8 images (N, C, S, S) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def pil(self, i: int) -> Image.Image:
        a = self.images[i].numpy()  # (C, S, S)
        return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def rgb(self, i: int) -> torch.Tensor:
        """uint8 (C, S, S) as held (`data.augment_on=device`)."""
        return self.images[i]

    def encoded(self, i: int) -> None:
        """No file behind an image held in memory: nothing for a device to decode."""
        return None


def fit_images(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Fit uint8 (N, C, H, W) to (N, C, size, size): zero-pad centred if no side exceeds `size`,
    else resize the shorter side to `size` (antialiased bilinear) and centre-crop."""
    h, w = images.shape[-2:]
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        pad = (left, size - w - left, top, size - h - top)
        return torch.nn.functional.pad(images, pad) if any(pad) else images
    out = []
    for part in images.split(chunk):  # bounded float memory for large sets
        x = TF.resize(part.float(), [size], antialias=True)
        x = TF.center_crop(x, [size, size])
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def subset_indices(n: int, subset: int) -> torch.Tensor:
    """Sorted indices of `subset` of `n` images, by a fixed permutation (seed 0) that no run seed
    moves: every run and process trains on the same subset."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[:subset].sort().values


def select_subset(n: int, cfg: "DataConfig", train: bool, where: str) -> Optional[torch.Tensor]:
    """The sorted indices `data.train_subset` (or `test_subset`) keeps of a split of `n` images; None keeps all."""
    key, subset = ("data.train_subset", cfg.train_subset) if train else ("data.test_subset", cfg.test_subset)
    if subset is None:
        return None
    if subset > n:
        raise DataError(f"{key}={subset} exceeds the {where} split's {n} images; lower it or set it to null")
    return subset_indices(n, subset)


def in_memory_split(images, labels, classes, stats, cfg: "DataConfig", train: bool, name: str) -> ImageSplit:
    """Subset, fit to img_size and wrap numpy (N, C, H, W) uint8 images and labels."""
    idx = select_subset(len(labels), cfg, train, f"{name} {'train' if train else 'test'}")
    if idx is not None:  # subset before copying and fitting: less work for small subsets
        images, labels = images[idx.numpy()], labels[idx.numpy()]
    images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
    labels = torch.tensor(np.asarray(labels), dtype=torch.int64)
    mean, std = (tuple(float(v) for v in s) for s in stats)
    return ImageSplit(fit_images(images, cfg.img_size), labels, list(classes), mean, std)


class StreamedSplit(torch.utils.data.Dataset):
    """A split decoded one item at a time; subclasses give `pil(i)` (an RGB image) and `label(i)`.

    `__getitem__(i)` returns (uint8 (3, S, S) fitted to img_size, label, i) for the pad path.
    """

    in_chans = 3
    classes: List[str]
    img_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def name(self, i: int) -> str:
        """Image i's file (or row), for an error message."""
        return f"image {i}"

    def encoded(self, i: int) -> Optional[bytes]:
        """The encoded file behind image i, for a device to decode; None where there is none."""
        return None

    def rgb(self, i: int) -> torch.Tensor:
        """uint8 (3, H, W) as stored (`data.augment_on=device`)."""
        return torch.from_numpy(np.asarray(self.pil(i)).copy()).permute(2, 0, 1)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int, int]:
        pixels = torch.from_numpy(np.asarray(self.pil(i)).copy()).permute(2, 0, 1)
        return fit_images(pixels[None], self.img_size)[0], self.label(i), i

