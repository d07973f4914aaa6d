"""Whole splits of image-classification datasets as raw uint8 pixels.

The engine keeps small sets whole on the training device and augments batches there, so these
loaders return pixels, not transformed samples:

- `fashion_mnist`, `cifar10`, `cifar100`, `hf` -> `ImageSplit`: uint8 (N, C, S, S) in memory.
- `imagefolder` -> `FolderSplit`: a Dataset that decodes one file per item (sets too big to hold).

Fitting to S = `img_size`: an image no larger than S on both sides is zero-padded, centred (the
MNIST convention: 28 -> 32 adds 2 px each side); any other image has its shorter side resized to S
(bilinear, antialiased, on float, rounded back to uint8) and is then centre-cropped to S x S.

`train_subset` / `test_subset` keep N images chosen by a permutation seeded with 0, so a subset is
class-balanced in expectation and the same in every process. The kept indices are sorted.
"""
from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

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


# ---------------------------------------------------------------------------- Hugging Face

_HF_STATS: dict = {}  # (root, train fingerprint) -> (mean, std), so the test split reuses them


def _hf_splits(root: str):
    import datasets

    if Path(root).exists():
        try:
            ds = datasets.load_from_disk(root)
        except Exception as e:
            raise DataError(f"hf: {root} is not a save_to_disk folder ({_one_line(e)})") from None
    elif Path(root).is_absolute() or root.startswith("."):
        raise DataError(f"hf: {root} not found; set data.root to a save_to_disk folder or a hub id")
    else:
        try:
            ds = datasets.load_dataset(root)
        except Exception as e:
            raise DataError(f"hf: could not load hub dataset {root!r} ({_one_line(e)}); "
                            f"without network, save_to_disk it elsewhere and point data.root there") from None
    if not isinstance(ds, datasets.DatasetDict):
        raise DataError(f"hf: {root} holds a single Dataset; save a DatasetDict with 'train' and 'test' splits")
    return ds


def _hf_columns(ds) -> Tuple[str, str]:
    """Names of the image and label columns, by feature type first, then by usual names."""
    import datasets

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
    import datasets

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


def load_hf(cfg: DataConfig, train: bool) -> ImageSplit:
    """A Hugging Face DatasetDict (save_to_disk folder or hub id); mean/std from its train images."""
    splits = _hf_splits(cfg.root)
    names = ["train"] if train else ["test", "validation"]
    split = next((n for n in names if n in splits), None)
    if "train" not in splits or split is None:
        raise DataError(f"hf: {cfg.root} has splits {list(splits)}; it needs 'train' and 'test' (or 'validation')")
    ds, image_col, label_col = splits[split], *_hf_columns(splits[split])
    if len(ds) == 0 or len(splits["train"]) == 0:
        raise DataError(f"hf: {cfg.root} has an empty '{split}' or 'train' split")
    key = "data.train_subset" if train else "data.test_subset"
    idx = subset_indices(len(ds), cfg.train_subset if train else cfg.test_subset, key, f"hf {split}")
    sub = ds.select(idx.tolist()) if idx is not None else ds
    pixels = _hf_pixels(sub, image_col)
    stats_key = (str(Path(cfg.root).resolve()), getattr(splits["train"], "_fingerprint", None))
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


# ---------------------------------------------------------------------------- image folders

def _scan(folder: Path, classes: List[str]) -> List[Tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            samples += [(p, label) for p in sorted((folder / name).iterdir())
                        if p.suffix.lower() in IMAGE_EXTENSIONS]
    return samples


class FolderSplit(torch.utils.data.Dataset):
    """Images under `root/<split>/<class>/`, decoded per item to uint8 (3, S, S).

    `__getitem__(i)` returns (image, label, i), `i` being the position in this (sub)set.
    """

    def __init__(self, samples: List[Tuple[Path, int]], classes: List[str], img_size: int):
        self.samples, self.classes, self.img_size = samples, classes, img_size
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.mean, self.std = STATS["imagenet"]
        self.in_chans = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                pixels = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        except OSError as e:
            raise DataError(f"{path}: cannot decode image ({_one_line(e)}); remove or replace it") from None
        return fit_images(pixels[None], self.img_size)[0], label, i


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
    return FolderSplit(samples, classes, cfg.img_size)


LOADERS = {"fashion_mnist": load_fashion_mnist, "cifar10": load_cifar, "cifar100": load_cifar,
           "hf": load_hf, "imagefolder": load_imagefolder}


def load_split(cfg: DataConfig, train: bool) -> Union[ImageSplit, FolderSplit]:
    """The train or test split named by `cfg.name`; raises DataError when missing or malformed."""
    if cfg.name not in LOADERS:
        raise DataError(f"data.name={cfg.name!r} is not one of: {', '.join(LOADERS)}")
    return LOADERS[cfg.name](cfg, train)
