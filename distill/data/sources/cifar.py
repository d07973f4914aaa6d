"""CIFAR-10 and CIFAR-100 (`data.name=cifar10|cifar100`) from torchvision's on-disk layout (python
pickles) in `data.root`, downloaded when missing and the network allows."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distill.data.sources.registry import published_stats, register_source
from distill.data.splits import ImageSplit, in_memory_split
from distill.errors import DataError, first_line

if TYPE_CHECKING:
    from distill.config import DataConfig

CIFAR = {  # name: (folder, train files, test files, label key, class-names key, meta file)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", b"label_names", "batches.meta"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", b"fine_label_names", "meta"),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path} is missing; delete its folder and download the dataset again") from None
    except Exception as e:  # truncated or foreign files raise any of several pickle errors
        raise DataError(f"{path}: not a readable CIFAR pickle ({first_line(e)}); download it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; download it again")
    return obj


def _download_cifar(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # URLError, timeouts, md5 mismatch: all mean "no usable download"
        raise DataError(f"{name}: download into {root} failed ({first_line(e)}); without network, put "
                        f"the python-version archive's folder {CIFAR[name][0]}/ in data.root") from None


@register_source("cifar10", train_images=50000, num_classes=10, in_chans=3,
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))  # the published constants
@register_source("cifar100", train_images=50000, num_classes=100, in_chans=3,
                 mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
def load_cifar(cfg: "DataConfig", train: bool) -> ImageSplit:
    """CIFAR-10/100 from torchvision's on-disk layout (python pickles), downloading if allowed."""
    folder_name, train_files, test_files, label_key, names_key, meta_file = CIFAR[cfg.name]
    folder = Path(cfg.root) / folder_name
    if not folder.is_dir():
        if not cfg.download:
            raise DataError(f"{cfg.name} not found in {folder}: set data.download=true (needs network) "
                            f"or extract the python-version archive into {cfg.root}")
        _download_cifar(cfg.name, Path(cfg.root))
    images, labels = [], []
    for file in train_files if train else test_files:
        batch = _unpickle(folder / file)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # 3072 = R, G, B planes
            lbl = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(f"{folder / file}: missing or malformed {first_line(e)}; download it again") from None
        if len(data) != len(lbl):
            raise DataError(f"{folder / file}: {len(data)} images but {len(lbl)} labels; download it again")
        images.append(data)
        labels.append(lbl)
    meta = _unpickle(folder / meta_file)
    if names_key not in meta:
        raise DataError(f"{folder / meta_file}: no {names_key.decode()} entry; download it again")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return in_memory_split(np.concatenate(images), np.concatenate(labels), classes, published_stats(cfg.name), cfg, train, cfg.name)
