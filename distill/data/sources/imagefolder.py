"""Image folders (`data.name=imagefolder`): `root/train/<class>/*` and `root/val/` (or `root/test/`),
decoded one image per item in the DataLoader workers, or whole up front with `data.in_memory=true`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from distill.data.decode import decode_rgb
from distill.data.sources.registry import IMAGENET_MEAN, IMAGENET_STD, register_source
from distill.data.splits import ImageSplit, StreamedSplit, select_subset
from distill.errors import DataError, first_line

if TYPE_CHECKING:
    from distill.config import DataConfig

MANIFEST = "prepare.json"  # what `distill prepare` writes into a resized copy (distill/commands/prepare.py)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


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

def copy_manifest(root) -> Optional[dict]:
    """The settings of a resized copy made by `distill prepare` (its prepare.json), or None."""
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


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
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def name(self, i: int) -> str:
        return str(self.folder / os.fsdecode(self.paths[i]))

    def pil(self, i: int) -> Image.Image:
        path = self.name(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError as e:  # unreadable, truncated, not an image (UnidentifiedImageError)
            raise DataError(f"{path}: cannot decode image ({first_line(e)}); remove or replace it") from None

    def encoded(self, i: int) -> bytes:
        """The file's bytes (`data.augment_on=device`)."""
        path = self.name(i)
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read image ({first_line(e)}); check the path") from None

    def rgb(self, i: int) -> torch.Tensor:
        """uint8 (3, H, W) as stored (`data.augment_on=device`), decoded by torchvision."""
        return decode_rgb(self.encoded(i), self.name(i))


@register_source("imagefolder", streams=True, in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 copy_of=copy_manifest)
def load_imagefolder(cfg: "DataConfig", train: bool) -> Union[FolderSplit, ImageSplit]:
    """`root/train/<class>/*` and `root/val/` (or `root/test/`); classes sorted from train."""
    root = Path(cfg.root)
    copy = copy_manifest(root)
    if copy is not None and copy.get("complete") is False:  # absent in copies made before the flag: whole
        raise DataError(f"imagefolder: {root} is a copy that distill prepare has not finished; finish it with "
                        f"distill prepare {copy['source']} {root} --max-side {copy['max_side']} "
                        f"--quality {copy['quality']}")
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
    idx = select_subset(len(samples), cfg, train, f"imagefolder {folder.name}")
    if idx is not None:
        samples = [samples[i] for i in idx.tolist()]
    split = FolderSplit(samples, classes, cfg.img_size)
    if cfg.in_memory:  # decoded once, held whole: the fast path for small folders
        images = torch.stack([split[i][0] for i in range(len(split))])
        return ImageSplit(images, split.labels, classes, split.mean, split.std)
    return split
