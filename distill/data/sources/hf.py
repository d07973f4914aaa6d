"""Hugging Face image datasets (`data.name=hf`): a DatasetDict saved with `save_to_disk`, or a hub id.

Two routes, chosen by `data.in_memory` (None = auto: in memory when `crop=pad` and the train split
decoded at img_size takes at most `IN_MEMORY_BYTES`):

- in memory: every image decoded up front into an `ImageSplit` (uint8), mean/std over all train images;
- streamed: `HFSplit` keeps `datasets`' memory-mapped Arrow table and decodes one image per item in
  the DataLoader workers; nothing is decoded up front, and mean/std come from `STATS_SAMPLE` train
  images (or `data.mean`/`data.std`). Streamed images are RGB.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from distill.data.decode import decode_rgb, pil_to_tensor
from distill.data.sources.registry import register_source
from distill.data.splits import GRAY_MODES, ImageSplit, StreamedSplit, fit_images, select_subset, subset_indices
from distill.errors import DataError, first_line

if TYPE_CHECKING:
    from distill.config import DataConfig

IN_MEMORY_BYTES = 2 << 30  # auto: decoded train split up to 2 GiB stays in memory
STATS_SAMPLE = 1000  # images behind a streamed set's mean/std

_HF_STATS: dict = {}  # (root, the train split's files and rows) -> (mean, std), so the test split reuses them


def _datasets():
    """The `datasets` library, imported when an hf set is read: it costs ~0.8 s, which every other
    command (and every config error) would pay at start-up."""
    import datasets

    return datasets


def _split_id(ds) -> tuple:
    """What identifies a split's contents for the stats cache: its Arrow files and row count."""
    return tuple(f["filename"] for f in ds.cache_files), ds.num_rows


def _hf_splits(root: str):
    datasets = _datasets()
    if Path(root).exists():
        try:
            ds = datasets.load_from_disk(root)
        except Exception as e:
            raise DataError(f"hf: {root} is not a save_to_disk folder ({first_line(e)})") from None
    elif Path(root).is_absolute() or root.startswith("."):
        raise DataError(f"hf: {root} not found; set data.root to a save_to_disk folder or a hub id")
    else:
        try:
            ds = datasets.load_dataset(root)
        except Exception as e:
            raise DataError(f"hf: could not load hub dataset {root!r} ({first_line(e)}); "
                            f"without network, save_to_disk it elsewhere and point data.root there") from None
    if not isinstance(ds, datasets.DatasetDict):
        raise DataError(f"hf: {root} holds a single Dataset; save a DatasetDict with 'train' and 'test' splits")
    return ds


def _hf_columns(ds) -> Tuple[str, str]:
    """Names of the image and label columns, by feature type first, then by usual names."""
    datasets = _datasets()
    feats = ds.features
    image = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in ("img", "image") if k in feats), None)
    label = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((k for k in ("label", "labels", "fine_label") if k in feats), None)
    if image is None or label is None:
        raise DataError(f"hf: cannot find an image and a label column among {list(feats)}; "
                        f"use an Image and a ClassLabel feature")
    return image, label


def _hf_pixels(ds, column: str) -> List[np.ndarray]:
    """Every image of `column` as uint8 (C, H, W); C = 1 if all images are grayscale, else 3."""
    datasets = _datasets()
    if isinstance(ds.features[column], datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
        pil = [Image.open(io.BytesIO(v["bytes"])) if v.get("bytes") else Image.open(v["path"])
               for v in ds[column]]  # lazy: reading the header gives the mode
        mode = "L" if all(im.mode in GRAY_MODES for im in pil) else "RGB"
        arrays = [np.asarray(im.convert(mode)) for im in pil]
    else:
        arrays = [np.asarray(v, dtype=np.uint8) for v in ds[column]]
    if all(a.ndim == 2 for a in arrays):
        return [a[None] for a in arrays]
    return [np.repeat(a[None], 3, 0) if a.ndim == 2 else a[..., :3].transpose(2, 0, 1) for a in arrays]


def _channel_stats(arrays: Sequence[np.ndarray]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] over all pixels of all images."""
    c = arrays[0].shape[0]
    total, sq, count = np.zeros(c), np.zeros(c), 0
    for a in arrays:
        flat = a.reshape(c, -1).astype(np.float64) / 255.0
        total += flat.sum(1)
        sq += (flat ** 2).sum(1)
        count += flat.shape[1]
    mean = total / count
    return tuple(mean.tolist()), tuple(np.sqrt(np.maximum(sq / count - mean ** 2, 0)).tolist())


def _load_in_memory(cfg: "DataConfig", train: bool, splits, split: str) -> ImageSplit:
    """Every image of the split decoded and fitted to img_size; mean/std over all train images."""
    ds, image_col, label_col = splits[split], *_hf_columns(splits[split])
    if len(ds) == 0 or len(splits["train"]) == 0:
        raise DataError(f"hf: {cfg.root} has an empty '{split}' or 'train' split")
    idx = select_subset(len(ds), cfg, train, f"hf {split}")
    sub = ds.select(idx.tolist()) if idx is not None else ds
    pixels = _hf_pixels(sub, image_col)
    stats_key = (str(Path(cfg.root).resolve()), _split_id(splits["train"]))
    if stats_key not in _HF_STATS:
        full = pixels if train and idx is None else _hf_pixels(splits["train"], image_col)
        _HF_STATS[stats_key] = _channel_stats(full)
    mean, std = _HF_STATS[stats_key]
    feature = ds.features[label_col]
    labels = np.asarray(list(sub[label_col]), np.int64)
    if hasattr(feature, "names"):
        classes = list(feature.names)
    else:  # plain integer labels: the classes are 0..max over both splits
        top = max(int(np.max(list(splits["train"][label_col]))), int(labels.max(initial=0)))
        classes = [str(i) for i in range(top + 1)]
    if len({p.shape for p in pixels}) == 1:  # one size: fit as a batch
        images = fit_images(torch.from_numpy(np.stack(pixels)), cfg.img_size)
    else:
        images = torch.stack([fit_images(torch.from_numpy(p.copy())[None], cfg.img_size)[0] for p in pixels])
    return ImageSplit(images, torch.from_numpy(labels), classes, mean, std)


def _open(value, where: str) -> Image.Image:
    """An undecoded `datasets.Image` cell ({"bytes", "path"}) -> RGB image; DataError naming the row."""
    try:
        with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as im:
            return im.convert("RGB")
    except (OSError, TypeError) as e:
        raise DataError(f"{where}: cannot decode image ({first_line(e)}); remove or replace it") from None


class HFSplit(StreamedSplit):
    """One split read through its memory-mapped Arrow table, one row decoded per item."""

    def __init__(self, ds, image_col: str, label_col: str, classes: List[str], img_size: int, where: str):
        datasets = _datasets()
        if isinstance(ds.features[image_col], datasets.Image):  # decode ourselves: errors name the row
            ds = ds.cast_column(image_col, datasets.Image(decode=False))
        self.ds, self.image_col, self.label_col = ds.select_columns([image_col, label_col]), image_col, label_col
        self.classes, self.img_size, self.where = classes, img_size, where
        self.mean, self.std = (0.5,) * 3, (0.5,) * 3  # replaced by `load_hf`

    def __len__(self) -> int:
        return len(self.ds)

    def label(self, i: int) -> int:
        return int(self.ds[i][self.label_col])

    def name(self, i: int) -> str:
        return f"{self.where} row {i}"

    def pil(self, i: int) -> Image.Image:
        value = self.ds[i][self.image_col]
        if isinstance(value, dict):
            return _open(value, self.name(i))
        return Image.fromarray(np.asarray(value, dtype=np.uint8)).convert("RGB")  # array columns

    def encoded(self, i: int) -> Optional[bytes]:
        """The row's encoded image (`data.augment_on=device`), or None for an array column."""
        value = self.ds[i][self.image_col]
        if not isinstance(value, dict):
            return None
        if value.get("bytes"):
            return value["bytes"]
        try:
            return Path(value["path"]).read_bytes()
        except (OSError, TypeError) as e:
            raise DataError(f"{self.name(i)}: cannot read image ({first_line(e)}); remove or replace it") from None

    def rgb(self, i: int) -> torch.Tensor:
        """uint8 (3, H, W) as stored (`data.augment_on=device`), decoded by torchvision."""
        data = self.encoded(i)
        if data is not None:
            return decode_rgb(data, self.name(i))
        return pil_to_tensor(Image.fromarray(np.asarray(self.ds[i][self.image_col], dtype=np.uint8)))


def _auto_in_memory(cfg: "DataConfig", rows: int) -> bool:
    if cfg.in_memory is not None:
        return cfg.in_memory
    return cfg.crop == "pad" and rows * 3 * cfg.img_size ** 2 <= IN_MEMORY_BYTES


def _sample_stats(split: HFSplit) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Mean/std over a fixed sample of `STATS_SAMPLE` images (seed 0), the same in every process."""
    idx = subset_indices(len(split), min(STATS_SAMPLE, len(split)))
    return _channel_stats([np.asarray(split.pil(i)).transpose(2, 0, 1) for i in idx.tolist()])


def _classes(splits, ds, label_col: str) -> List[str]:
    feature = ds.features[label_col]
    if hasattr(feature, "names"):
        return list(feature.names)
    top = max(int(np.max(splits[n].with_format("numpy")[label_col], initial=0)) for n in splits)
    return [str(i) for i in range(top + 1)]  # plain integer labels: 0..max over all splits


@register_source("hf", streams=True)
def load_hf(cfg: "DataConfig", train: bool):
    """A split of a Hugging Face DatasetDict, in memory (`ImageSplit`) or streamed (`HFSplit`)."""
    splits = _hf_splits(cfg.root)
    names = ["train"] if train else ["test", "validation"]
    split = next((n for n in names if n in splits), None)
    if "train" not in splits or split is None:
        raise DataError(f"hf: {cfg.root} has splits {list(splits)}; it needs 'train' and 'test' (or 'validation')")
    if _auto_in_memory(cfg, len(splits["train"])):
        return _load_in_memory(cfg, train, splits, split)
    ds, (image_col, label_col) = splits[split], _hf_columns(splits[split])
    if len(ds) == 0 or len(splits["train"]) == 0:
        raise DataError(f"hf: {cfg.root} has an empty '{split}' or 'train' split")
    idx = select_subset(len(ds), cfg, train, f"hf {split}")
    sub = ds.select(idx.tolist()) if idx is not None else ds
    out = HFSplit(sub, image_col, label_col, _classes(splits, ds, label_col), cfg.img_size, f"hf {cfg.root} '{split}'")
    stats_key = (str(Path(cfg.root).resolve()), _split_id(splits["train"]), "sample")
    if cfg.mean is None and stats_key not in _HF_STATS:
        train_split = HFSplit(splits["train"], *_hf_columns(splits["train"]), out.classes, cfg.img_size, "")
        _HF_STATS[stats_key] = _sample_stats(train_split)
    out.mean, out.std = _HF_STATS.get(stats_key, (out.mean, out.std))
    return out
