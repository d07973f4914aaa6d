"""Data sources, one file each, registered by name (`data.name`): whole splits of image-classification
datasets as raw uint8 pixels (`distill.data.splits`).

The engine keeps small sets whole on the training device and augments batches there, so a source
returns pixels, not transformed samples: an `ImageSplit` (uint8 (N, C, S, S) in memory) or a
`StreamedSplit` that decodes one image per item in DataLoader workers, so memory does not grow with
the set. Every split also hands out single images, `pil(i)` and `label(i)`, for the per-sample
transforms of `data.crop=rrc` (`distill.data.transforms`).

To add one: a file here whose loader is decorated with `@register_source("name")`, and its import below.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

from distill.data.sources.registry import SOURCES, register_source
from distill.data.sources import cifar, fashion_mnist, hf, imagefolder  # noqa: F401,E402  (each registers itself)
from distill.data.splits import ImageSplit, StreamedSplit
from distill.errors import DataError

if TYPE_CHECKING:
    from distill.config import DataConfig

__all__ = ["SOURCES", "load_split", "register_source"]


def load_split(cfg: "DataConfig", train: bool) -> Union[ImageSplit, StreamedSplit]:
    """The train or test split named by `cfg.name`; raises DataError when missing or malformed.

    `data.mean`/`data.std`, when given, replace the dataset's normalisation."""
    source = SOURCES.get(cfg.name)
    if source is None:
        raise DataError(f"data.name={cfg.name!r} is not one of: {', '.join(SOURCES)}")
    if cfg.in_memory is False and not source.streams:
        raise DataError(f"data.in_memory=false: {cfg.name} is always read whole (it is small); set data.in_memory=null")
    split = source.load(cfg, train)
    if cfg.mean is not None:
        if len(cfg.mean) != split.in_chans:
            raise DataError(f"data.mean has {len(cfg.mean)} values but {cfg.name} images have {split.in_chans} channels")
        split.mean, split.std = tuple(cfg.mean), tuple(cfg.std)
    return split
