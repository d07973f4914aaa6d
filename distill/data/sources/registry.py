"""The registry of data sources: `data.name` -> the function that loads a split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict


@dataclass(frozen=True)
class Source:
    """`load(cfg: DataConfig, train: bool)` returns an `ImageSplit` or a `StreamedSplit`; `streams`:
    it can also decode per item from disk (`data.in_memory=false`)."""

    load: Callable
    streams: bool = False


SOURCES: Dict[str, Source] = {}


def register_source(*names: str, streams: bool = False) -> Callable:
    """Decorator: the function loads a split of each `data.name` in `names`."""
    def register(load: Callable) -> Callable:
        for name in names:
            assert name not in SOURCES, f"data.name={name} is registered twice"
            SOURCES[name] = Source(load, streams)
        return load

    return register
