"""Training views with timm's augmentation split between the workers and the device
(`data.augment_on=device`).

A worker does only what must be per file: read the file, decode it (unless the device decodes,
`data.decode_on`), cut timm's RandomResizedCrop box and flip it, and make the *draws* of RandAugment
and random erasing with timm's own code, from the same per-view seed as the `workers` path
(`distill.data.seeds.view_seed`). It hands over the crop's pixels (or the JPEG's bytes) and a small
vector of draws. The training device then, for the whole batch (`DeviceAugment`, run by
`LoaderBatches` before the step sees the batch): decodes the JPEGs (torchvision's batched
`decode_jpeg`, nvJPEG on a GPU), crops and flips them, resizes every crop to `img_size`, applies
RandAugment, normalises and erases.

The crop box, the flip, the RandAugment ops and magnitudes and the erasing boxes are timm's draws,
identical to the `workers` path's for the same (seed, epoch, view). The pixels are not: the resize
is torch's antialiased resize rather than PIL's, the ops are tensor versions of PIL's (tolerances
in tests/test_device_augment.py), the erasing noise is a counter-based draw from the view's key, and
a GPU's JPEG decoder rounds differently from libjpeg-turbo. A view is still a pure function of
(seed, epoch, view id), the image and where it is decoded, so resume, 1-vs-N and the logit cache stay
exact; runs that must reproduce timm's views pixel for pixel use `data.augment_on=workers`.

Why the resize moved to the device: for a 500x375 JPEG to 224 px bicubic it took 1.2 ms of a
worker's 3.2 (one core, AVX512), decode 0.9 ms; a GPU resizes a batch's crops in microseconds each.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable, List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from distill.data.device.randaugment import RandAugmentDraws, apply_rand_augment, draw_erasing, erase, host, to_device
from distill.data.transforms import guard_posterize
from distill.data.seeds import seed_view_rngs, view_seed
from distill.errors import DataError, first_line

if TYPE_CHECKING:
    from distill.config import DataConfig

PIXELS, JPEG = 0, 1  # what an item's buffer holds: the crop's uint8 pixels, or the whole JPEG file
HEAD = 7  # [kind, nbytes, h, w, top, left, flip] opens every item's draws


class DeviceTrainViews(torch.utils.data.Dataset):
    """Key (view id, epoch) -> (uint8 buffer, label, view id, float64 draws (P,), int64 noise key).

    The buffer is the crop's pixels (C, h, w) flattened, cut and flipped here, or, with
    `decode_on_device` and a JPEG file, the file's bytes (cut and flipped after decoding). The draws
    are HEAD's seven numbers, RandAugment's rows (`RandAugmentDraws.draw`, L x 3), then the erasing
    boxes (`draw_erasing`, recount x 4); the key is the view's seed. `collate` ships a batch's buffers
    as one flat uint8 tensor, so that nothing is padded.

    `split` is any source with `rgb(i)` (uint8 (C, H, W) as stored), `encoded(i)` (the file's bytes
    or None) and `label(i)`."""

    keyed = True  # receives (view, epoch) keys from `distill.data.loader.LoaderBatches`

    def __init__(self, split, cfg: "DataConfig", seed: int, decode_on_device: bool = False):
        self.split, self.seed, self.cfg, self.decode_on_device = split, seed, cfg, decode_on_device
        primary, secondary, _ = create_transform(
            cfg.img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
            hflip=0.5 if cfg.hflip else 0.0, color_jitter=None, auto_augment=cfg.auto_augment,
            interpolation=cfg.interpolation, mean=tuple(split.mean), std=tuple(split.std), re_prob=0.0,
            separate=True)  # the split's mean: RandAugment's geometric ops fill with it, one value per channel
        self.crop = primary.transforms[0]  # timm's RandomResizedCropAndInterpolation: its draw, not its resize
        guard_posterize(secondary)
        self.rand_augment = RandAugmentDraws(secondary) if cfg.auto_augment else None

    def __len__(self) -> int:
        return len(self.split)

    def _source(self, i: int):
        """(buffer or None, image for the crop draw): the JPEG bytes and the lazily opened file (its
        header gives the size; nothing is decoded), or None and the decoded uint8 image."""
        data = self.split.encoded(i) if self.decode_on_device else None
        if data is not None and data[:2] == b"\xff\xd8":  # a JPEG: the device decodes it
            try:
                image = Image.open(io.BytesIO(data))
            except OSError as e:  # a damaged header (UnidentifiedImageError)
                raise DataError(f"{self.split.name(i)}: cannot decode image ({first_line(e)}); "
                                "remove or replace it") from None
            if image.mode in ("RGB", "L"):  # a CMYK or YCCK file (ImageNet has a few) is decoded here, by
                return data, image  # libjpeg-turbo: whether nvJPEG converts its colours right is untested
        return None, self.split.rgb(i)

    def name(self, view: int) -> str:
        """The file (or row) behind a view, for an error message."""
        return self.split.name(view % len(self.split))

    def __getitem__(self, key):
        view, epoch = key
        i = view % len(self.split)
        data, image = self._source(i)
        s = view_seed(self.seed, epoch, view)
        seed_view_rngs(s)
        top, left, h, w = self.crop.get_params(image, self.crop.scale, self.crop.ratio)  # timm's primary, in order
        flip = bool(self.cfg.hflip and torch.rand(1) < 0.5)  # torchvision's RandomHorizontalFlip(0.5) draw
        if data is None:
            crop = image[:, top:top + h, left:left + w]
            buffer = (crop.flip(-1) if flip else crop).reshape(-1)
            head = [PIXELS, buffer.numel(), h, w, 0, 0, 0]
        else:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            head = [JPEG, buffer.numel(), h, w, top, left, int(flip)]
        draws = [torch.tensor(head)]
        if self.rand_augment is not None:
            draws.append(self.rand_augment.draw())
        if self.cfg.reprob > 0:
            draws.append(draw_erasing(self.cfg.reprob, self.cfg.recount, self.cfg.img_size))
        params = torch.cat([d.flatten().double() for d in draws])
        return buffer, self.split.label(i), view, params, s

    @staticmethod
    def collate(items):
        """The buffers, of different sizes, as one flat uint8 tensor in batch order; the rest stacked."""
        return (torch.cat([x[0] for x in items]), *default_collate([x[1:] for x in items]))


def crops_of(flat: torch.Tensor, head: torch.Tensor, channels: int, name: Callable[[int], str], device=None
             ) -> List[torch.Tensor]:
    """Each item's crop (C, h, w) uint8 on `device` (default: the flat buffer's): pixel buffers viewed in
    place after one copy of the buffer, JPEG buffers decoded together (one batched `decode_jpeg`, nvJPEG
    on a GPU, handed the files from host memory), then cut and flipped. `flat` and `head` are best on the
    host (pinned, from a GPU's DataLoader): the head is read there, so nothing waits for the device.
    `name(k)` names item k's file in the error for a JPEG that cannot be decoded."""
    device = torch.device(device or flat.device)
    rows = host(head).astype(np.int64)  # (B, HEAD)
    ends = np.cumsum(rows[:, 1])
    spans = list(zip((ends - rows[:, 1]).tolist(), ends.tolist()))
    rows = rows.tolist()
    jpegs = [k for k, r in enumerate(rows) if r[0] == JPEG]
    decoded = {}
    if jpegs:
        files = flat if flat.device.type == "cpu" else flat.cpu()
        decoded = dict(zip(jpegs, decode_jpegs([files[slice(*spans[k])] for k in jpegs], device,
                                               lambda j: name(jpegs[j]))))
    pixels = to_device(flat, device) if len(jpegs) < len(rows) else None
    out = []
    for k, (kind, _, h, w, top, left, flip) in enumerate(rows):
        if kind == PIXELS:
            out.append(pixels[slice(*spans[k])].view(channels, h, w))
            continue
        crop = decoded[k][:, top:top + h, left:left + w]
        out.append(crop.flip(-1) if flip else crop)
    return out


def decode_jpegs(files: List[torch.Tensor], device, name: Callable[[int], str]) -> List[torch.Tensor]:
    """JPEG files (uint8 host tensors) -> RGB uint8 (3, H, W) on `device`, decoded there in one batch.
    nvJPEG refuses some files (CMYK ones, which ImageNet has): then each file is decoded alone, on the
    device where it can be and on the CPU where not, so a file's pixels never depend on its batch. A file
    neither can decode (a damaged one) is a DataError naming it (`name(j)` for files[j])."""
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    out = []
    for j, f in enumerate(files):
        try:
            out.append(decode_jpeg(f, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            try:
                out.append(decode_jpeg(f, mode=ImageReadMode.RGB).to(device))
            except RuntimeError as e:
                raise DataError(f"{name(j)}: cannot decode image ({first_line(e)}); remove or replace it") from None
    return out


def resize_crops(crops: List[torch.Tensor], size: int, interpolation: str) -> torch.Tensor:
    """Every crop resized to size x size, antialiased, rounded back to uint8: what torchvision's
    `resized_crop` does to one uint8 image. Crops of one size are resized in one call; the rounding and
    the cast run once for the batch (a GPU launches ~2 kernels per crop of its own size, not ~6)."""
    device = crops[0].device
    mode = {"bicubic": "bicubic", "bilinear": "bilinear"}.get(interpolation, "bilinear")
    sizes = {}  # (h, w) -> the items of that size, in batch order
    for k, crop in enumerate(crops):
        sizes.setdefault(tuple(crop.shape[-2:]), []).append(k)
    order = [k for ks in sizes.values() for k in ks]
    stacks = [crops[ks[0]][None] if len(ks) == 1 else torch.stack([crops[k] for k in ks]) for ks in sizes.values()]
    resized = torch.cat([F.interpolate(x.float(), (size, size), mode=mode, antialias=True, align_corners=False)
                         for x in stacks])
    if order != list(range(len(crops))):  # back to batch order: one gather, its index copied once
        resized = resized.index_select(0, to_device(np.argsort(order), device))
    return resized.round_().clamp_(0, 255).to(torch.uint8)


class DeviceAugment:
    """On the training device, for a whole batch: decode (JPEG buffers), cut and resize the crops,
    RandAugment by the drawn parameters, normalisation, then random erasing; returns (float views,
    labels, view ids) as the workers path does. `name(view)` names a view's file in a decoding error
    (`DeviceTrainViews.name`)."""

    def __init__(self, cfg: "DataConfig", rand_augment, normalize, channels: int = 3,
                 name: Callable[[int], str] = "view {}".format):
        self.cfg, self.normalize, self.channels, self.name = cfg, normalize, channels, name
        self.ra_shape = rand_augment.shape if rand_augment is not None else None
        self.fill = rand_augment.fill if rand_augment is not None else None
        self.fill_on_device = None  # the fill as a device tensor, copied once, not once a batch

    def __call__(self, flat, labels, index, params, keys):
        """The batch as the workers collated it, on the host (`LoaderBatches` leaves it there, pinned for
        a GPU): the draws are read on the host and the data copied to the device without waiting."""
        device, B, used = self.normalize.scale.device, params.shape[0], HEAD
        crops = crops_of(flat, params[:, :HEAD], self.channels, lambda k: self.name(int(index[k])), device)
        images = resize_crops(crops, self.cfg.img_size, self.cfg.interpolation)
        if self.ra_shape is not None:
            n = self.ra_shape[0] * self.ra_shape[1]
            if self.fill_on_device is None or self.fill_on_device.device != images.device:
                self.fill_on_device = torch.as_tensor(self.fill, dtype=torch.float64, device=images.device)
            images = apply_rand_augment(images, params[:, used:used + n].reshape(B, *self.ra_shape),
                                        self.fill_on_device)
            used += n
        x = self.normalize(images)
        if self.cfg.reprob > 0:
            x = erase(x, params[:, used:].reshape(B, self.cfg.recount, 4), keys, self.cfg.remode)
        return x, to_device(labels, device), to_device(index, device)
