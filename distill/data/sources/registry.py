"""The registry of data sources: `data.name` -> how to load a split, and the source's facts.

As timm's `default_cfg` carries a model's mean, std and input size, a source carries what is known of
its data without reading it (classes, channels, published mean/std, train-split size) and how a run
records which copy of it trained: no second list elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN/STD: image folders are normalised so
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Source:
    """`load(cfg: DataConfig, train: bool)` returns an `ImageSplit` or a `StreamedSplit`; `streams`:
    it can also decode per item from disk (`data.in_memory=false`). The facts are None where only the
    data knows them (an image folder's classes, an hf set's statistics)."""

    load: Callable
    streams: bool = False
    train_images: Optional[int] = None
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None  # per channel in [0, 1], the published constants
    std: Optional[Tuple[float, ...]] = None
    copy_of: Optional[Callable] = None  # root -> the manifest of the copy it is (`distill prepare`), or None

    @property
    def shape(self) -> Optional[Tuple[int, int, int]]:
        """(train images, classes, channels), where all three are known without reading the data."""
        known = (self.train_images, self.num_classes, self.in_chans)
        return known if None not in known else None


SOURCES: Dict[str, Source] = {}


def register_source(name: str, streams: bool = False, **facts) -> Callable:
    """Decorator: the function loads a split of `data.name=name`; `facts` are `Source`'s fields."""
    def register(load: Callable) -> Callable:
        assert name not in SOURCES, f"data.name={name} is registered twice"
        SOURCES[name] = Source(load, streams, **facts)
        return load

    return register


def published_stats(name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) a registered source declares."""
    return SOURCES[name].mean, SOURCES[name].std
