"""Fashion-MNIST (`data.name=fashion_mnist`): IDX files from Debian's dataset-fashion-mnist, `data.root`,
or a torchvision `FashionMNIST/raw` folder; 60,000 + 10,000 gray 28 x 28 images, 10 classes."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from distill.data.sources.registry import published_stats, register_source
from distill.data.splits import ImageSplit, in_memory_split
from distill.errors import DataError, first_line

if TYPE_CHECKING:
    from distill.config import DataConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array (gzipped or not), header validated against the file size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable ({first_line(e)}); delete it and fetch it again") from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not a uint8 IDX file with {ndim} dims (bad magic); delete it and fetch it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds "
                        f"{len(raw) - start}; the file is truncated or corrupt, fetch it again")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    return next((folder / n for n in (stem + ".gz", stem) if (folder / n).is_file()), None)


@register_source("fashion_mnist", train_images=60000, num_classes=10, in_chans=1,
                 mean=(0.2860,), std=(0.3530,))  # the published constants
def load_fashion_mnist(cfg: "DataConfig", train: bool) -> ImageSplit:
    """Fashion-MNIST from IDX files in root, root/FashionMNIST/raw or Debian's dataset folder."""
    prefix = "train" if train else "t10k"
    places = [Path(cfg.root), Path(cfg.root) / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    for folder in places:
        img_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if img_path and lbl_path:
            break
    else:
        raise DataError(f"fashion_mnist not found in {', '.join(map(str, places))}: install Debian's "
                        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or put the "
                        f"IDX .gz files in data.root")
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} {len(labels)} labels; fetch both again")
    if labels.size and labels.max() >= len(FASHION_CLASSES):
        raise DataError(f"{lbl_path}: label {labels.max()} is out of range 0..9; fetch it again")
    stats = published_stats("fashion_mnist")
    return in_memory_split(images[:, None], labels, FASHION_CLASSES, stats, cfg, train, "fashion_mnist")
