"""Whole splits of image-classification datasets as raw uint8 pixels.

The engine keeps small sets whole on the training device and augments batches there, so these
loaders return pixels, not transformed samples:

- `fashion_mnist`, `cifar10`, `cifar100`, small `hf` sets -> `ImageSplit`: uint8 (N, C, S, S) in memory.
- `imagefolder`, large `hf` sets -> `FolderSplit` / `HFSplit` (`distill.datasets_hf`): Datasets that
  decode one image per item in DataLoader workers, so memory does not grow with the set.
  `data.in_memory` overrides the choice for `hf` and `imagefolder`.

Every split also hands out single images, `pil(i)` and `label(i)`, for the per-sample transforms of
`data.crop=rrc` (`distill.transforms`).

Fitting to S = `img_size`: an image no larger than S on both sides is zero-padded, centred (the
MNIST convention: 28 -> 32 adds 2 px each side); any other image has its shorter side resized to S
(bilinear, antialiased, on float, rounded back to uint8) and is then centre-cropped to S x S.

`train_subset` / `test_subset` keep N images chosen by a permutation seeded with 0, so a subset is
class-balanced in expectation and the same in every process. The kept indices are sorted.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from distill.config import DataConfig
from distill.errors import DataError  # noqa: F401  (raised here; re-exported)


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Per-channel mean/std in [0, 1] units, the usual published constants.
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
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


def subset_indices(n: int, subset: Optional[int], key: str, split: str) -> Optional[torch.Tensor]:
    """Sorted indices of `subset` images drawn by a fixed permutation (seed 0); None keeps all."""
    if subset is None:
        return None
    if subset > n:
        raise DataError(f"{key}={subset} exceeds the {split} split's {n} images; lower it or set it to null")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[:subset].sort().values


def _finish(images, labels, classes, stats, cfg: DataConfig, train: bool, name: str) -> ImageSplit:
    """Subset, fit to img_size and wrap numpy (N, C, H, W) uint8 images and labels."""
    key, split = ("data.train_subset", "train") if train else ("data.test_subset", "test")
    idx = subset_indices(len(labels), cfg.train_subset if train else cfg.test_subset, key, f"{name} {split}")
    if idx is not None:  # subset before copying and fitting: less work for small subsets
        images, labels = images[idx.numpy()], labels[idx.numpy()]
    images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
    labels = torch.tensor(np.asarray(labels), dtype=torch.int64)
    mean, std = (tuple(float(v) for v in s) for s in stats)
    return ImageSplit(fit_images(images, cfg.img_size), labels, list(classes), mean, std)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---------------------------------------------------------------------------- Fashion-MNIST

def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array (gzipped or not), header validated against the file size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable ({_one_line(e)}); delete it and fetch it again") from None
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


def load_fashion_mnist(cfg: DataConfig, train: bool) -> ImageSplit:
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
    return _finish(images[:, None], labels, FASHION_CLASSES, STATS["fashion_mnist"], cfg, train, "fashion_mnist")


# ---------------------------------------------------------------------------- CIFAR-10/100

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
        raise DataError(f"{path}: not a readable CIFAR pickle ({_one_line(e)}); download it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; download it again")
    return obj


def _download_cifar(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # URLError, timeouts, md5 mismatch: all mean "no usable download"
        raise DataError(f"{name}: download into {root} failed ({_one_line(e)}); without network, put "
                        f"the python-version archive's folder {CIFAR[name][0]}/ in data.root") from None


def load_cifar(cfg: DataConfig, train: bool) -> ImageSplit:
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
            raise DataError(f"{folder / file}: missing or malformed {_one_line(e)}; download it again") from None
        if len(data) != len(lbl):
            raise DataError(f"{folder / file}: {len(data)} images but {len(lbl)} labels; download it again")
        images.append(data)
        labels.append(lbl)
    meta = _unpickle(folder / meta_file)
    if names_key not in meta:
        raise DataError(f"{folder / meta_file}: no {names_key.decode()} entry; download it again")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return _finish(np.concatenate(images), np.concatenate(labels), classes, STATS[cfg.name], cfg, train, cfg.name)


# ---------------------------------------------------------------------------- image folders

def _scan(folder: Path, classes: List[str]) -> List[Tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            found = [(p, label) for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise DataError(f"imagefolder: {folder / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))});"
                                f" add some or remove the folder")
            samples += found
    return samples


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

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int, int]:
        pixels = torch.from_numpy(np.asarray(self.pil(i)).copy()).permute(2, 0, 1)
        return fit_images(pixels[None], self.img_size)[0], self.label(i), i


class FolderSplit(StreamedSplit):
    """Images under `root/<split>/<class>/`, decoded per item.

    Paths are held as one numpy bytes array relative to the split's folder (tens of bytes an image,
    no Python object per file), so workers share the pages instead of copying them on touch.
    """

    def __init__(self, samples: List[Tuple[Path, int]], classes: List[str], img_size: int):
        self.folder = Path(samples[0][0]).parent.parent if samples else Path(".")
        self.paths = np.array([os.fsencode(Path(p).relative_to(self.folder)) for p, _ in samples], dtype=bytes)
        self.classes, self.img_size = classes, img_size
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.mean, self.std = STATS["imagenet"]

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def pil(self, i: int) -> Image.Image:
        path = self.folder / os.fsdecode(self.paths[i])
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError as e:  # unreadable, truncated, not an image (UnidentifiedImageError)
            raise DataError(f"{path}: cannot decode image ({_one_line(e)}); remove or replace it") from None


def load_imagefolder(cfg: DataConfig, train: bool) -> FolderSplit:
    """`root/train/<class>/*` and `root/val/` (or `root/test/`); classes sorted from train."""
    root = Path(cfg.root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: {train_dir} not found; lay images out as {root}/train/<class>/*.png "
                        f"and {root}/val/<class>/*.png")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    folder = train_dir
    if not train:
        folder = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if folder is None:
            raise DataError(f"imagefolder: neither {root}/val nor {root}/test exists; add a test split")
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise DataError(f"imagefolder: {folder} has classes not in {train_dir}: {', '.join(extra)}")
    samples = _scan(folder, classes)
    if not samples:
        raise DataError(f"imagefolder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}/<class>/")
    key = "data.train_subset" if train else "data.test_subset"
    subset = cfg.train_subset if train else cfg.test_subset
    idx = subset_indices(len(samples), subset, key, f"imagefolder {folder.name}")
    if idx is not None:
        samples = [samples[i] for i in idx.tolist()]
    split = FolderSplit(samples, classes, cfg.img_size)
    if cfg.in_memory:  # decoded once, held whole: the fast path for small folders
        images = torch.stack([split[i][0] for i in range(len(split))])
        return ImageSplit(images, split.labels, classes, split.mean, split.std)
    return split


def load_hf(cfg: DataConfig, train: bool):
    from distill.datasets_hf import load_hf as load  # `datasets` is imported only when used

    return load(cfg, train)


LOADERS = {"fashion_mnist": load_fashion_mnist, "cifar10": load_cifar, "cifar100": load_cifar,
           "hf": load_hf, "imagefolder": load_imagefolder}


def load_split(cfg: DataConfig, train: bool) -> Union[ImageSplit, StreamedSplit]:
    """The train or test split named by `cfg.name`; raises DataError when missing or malformed.

    `data.mean`/`data.std`, when given, replace the dataset's normalisation."""
    if cfg.name not in LOADERS:
        raise DataError(f"data.name={cfg.name!r} is not one of: {', '.join(LOADERS)}")
    if cfg.in_memory is False and cfg.name not in ("hf", "imagefolder"):
        raise DataError(f"data.in_memory=false: {cfg.name} is always read whole (it is small); set data.in_memory=null")
    split = LOADERS[cfg.name](cfg, train)
    if cfg.mean is not None:
        if len(cfg.mean) != split.in_chans:
            raise DataError(f"data.mean has {len(cfg.mean)} values but {cfg.name} images have {split.in_chans} channels")
        split.mean, split.std = tuple(cfg.mean), tuple(cfg.std)
    return split
