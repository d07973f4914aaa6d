"""timm's RandAugment and random erasing, drawn per view in the workers and applied per batch on the
training device.

A worker, right after its crop and flip and under the view's seeding (`distill.data.views`), makes
the draws with timm's own code and hands them over as small tensors:

- `RandAugmentDraws(secondary).draw()` -> (L, 3) float64, one row per layer in timm's order:
  `[op id, level, resample]`. op id indexes `DEVICE_OPS` (-1: the layer's op was skipped, as each
  applies with probability `p`); level is the argument timm's `level_fn` gave (degrees, shear factor,
  translate pixels or fraction of the size, enhance factor, posterize bits, solarize threshold, ...);
  resample is Pillow's code (0 nearest, 2 bilinear, 3 bicubic) for geometric ops, -1 otherwise. It
  is float64 because Pillow computes geometric ops in double from Python's double arguments.
- `draw_erasing(probability, count, size)` -> (count, 4) int64 boxes `[top, left, h, w]` (h = 0:
  none), timm's RandomErasing draws.

The device then runs `apply_rand_augment` on the uint8 batch and `erase` on the normalised one.
"""
from __future__ import annotations

import copy
import math
import random
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as aa

from distill.data import device_ops as ops
from distill.data.views import hash32
from distill.errors import ConfigError

PIXEL_OPS = {
    "AutoContrast": ops.autocontrast, "Equalize": ops.equalize, "Invert": ops.invert, "Posterize": ops.posterize,
    "Solarize": ops.solarize, "SolarizeAdd": ops.solarize_add, "Color": ops.color, "Contrast": ops.contrast,
    "Brightness": ops.brightness, "Sharpness": ops.sharpness,
}
GEOMETRIC_OPS = {  # name -> Pillow AFFINE matrix per sample, from (level, width, height)
    "Rotate": ops.rotate_matrix, "ShearX": ops.shear_x_matrix, "ShearY": ops.shear_y_matrix,
    "TranslateX": ops.translate_x_matrix, "TranslateY": ops.translate_y_matrix,
    "TranslateXRel": ops.translate_x_rel_matrix, "TranslateYRel": ops.translate_y_rel_matrix,
}
DEVICE_OPS = tuple(PIXEL_OPS) + tuple(GEOMETRIC_OPS)  # op id = position here
SKIPPED = (-1.0, 0.0, -1.0)


def device_op(timm_name: str) -> Union[str, None]:
    """The device op that runs timm's op `timm_name` ('PosterizeIncreasing' -> 'Posterize'), or None.
    timm's variants differ only in `level_fn`, whose output is what the draws record."""
    for name in (timm_name, timm_name.removesuffix("Increasing"), timm_name.removesuffix("Original")):
        if name in DEVICE_OPS:
            return name
    return None


def _the_augment(transform):
    """The one timm RandAugment / AutoAugment in `transform` (itself, or a Compose holding only it)."""
    inner = getattr(transform, "transforms", [transform])
    if len(inner) != 1 or not isinstance(inner[0], (aa.RandAugment, aa.AutoAugment)):
        kinds = ", ".join(type(t).__name__ for t in inner)
        raise ConfigError(f"data.auto_augment: the device applies timm's RandAugment (rand-*) or an AutoAugment "
                          f"policy (v0, original, ...), not {kinds}; set data.augment_on=workers")
    ops_ = list(getattr(inner[0], "ops", [])) + [op for sub in getattr(inner[0], "policy", []) for op in sub]
    unknown = sorted({op.name for op in ops_ if device_op(op.name) is None})
    if unknown:
        raise ConfigError(f"data.auto_augment: timm op(s) {', '.join(unknown)} have no device version (it has "
                          f"{', '.join(DEVICE_OPS)}); set data.augment_on=workers")
    resample = {int(r) for op in ops_ for r in np.atleast_1d(op.kwargs["resample"])}
    if not resample <= {ops.NEAREST, ops.BILINEAR, ops.BICUBIC}:
        raise ConfigError(f"data.interpolation: RandAugment's geometric ops (Pillow's, and the device's) take "
                          f"nearest, bilinear, bicubic or random, not "
                          f"{', '.join(Image.Resampling(r).name.lower() for r in sorted(resample))}")
    return inner[0]


class _Layer:
    """Stands in for one timm AugmentOp in the copy: opens the layer's row as skipped, then runs the
    op's own `__call__` (probability, magnitude noise, `level_fn`), whose `aug_fn` is `record`."""

    def __init__(self, op, rows: list):
        self.rows, self.op = rows, copy.copy(op)
        self.op.aug_fn = self.record
        self.name = device_op(op.name)
        self.op_id = float(DEVICE_OPS.index(self.name))

    def __call__(self, img):
        self.rows.append(SKIPPED)
        return self.op(img)

    def record(self, img, *level, **kwargs):
        resample = -1
        if self.name in GEOMETRIC_OPS:
            resample = kwargs.get("resample", Image.Resampling.BICUBIC)
            if isinstance(resample, (list, tuple)):  # timm's interpolation=random draws one per op, here
                resample = random.choice(resample)
        self.rows[-1] = (self.op_id, float(level[0]) if level else 0.0, float(resample))
        return img


class RandAugmentDraws:
    """What timm's RandAugment (or AutoAugment policy) would do to a view, without its pixels.

    `transform` is timm's: `secondary` of `create_transform(..., separate=True)` or the object in it.
    `draw()` runs timm's own `__call__` on a copy whose ops record their arguments instead of
    applying them, so the draws from numpy (op choice) and `random` (apply or skip, magnitude noise,
    sign, random interpolation) are timm's own, in timm's order: after `draw()` both RNGs are where
    timm's real call leaves them, and the erasing draws that follow line up.
    """

    def __init__(self, transform):
        timm_augment = _the_augment(transform)
        self.rows: list = []
        self.augment = copy.copy(timm_augment)
        if isinstance(timm_augment, aa.RandAugment):
            self.augment.ops = [_Layer(op, self.rows) for op in timm_augment.ops]
            layers, first = timm_augment.num_layers, timm_augment.ops[0]
        else:
            self.augment.policy = [[_Layer(op, self.rows) for op in sub] for sub in timm_augment.policy]
            layers, first = max(len(sub) for sub in timm_augment.policy), timm_augment.policy[0][0]
        self.shape = (layers, 3)
        fill = first.kwargs["fillcolor"]  # timm's img_mean, the same for every op
        self.fill = tuple(int(v) for v in (fill if isinstance(fill, (tuple, list)) else (fill,)))
        self.image = Image.new("RGB", (1, 1))  # handed through untouched

    def draw(self) -> torch.Tensor:
        """(L, 3) float64 rows [op id, level, resample], in the order timm would apply them."""
        self.rows.clear()
        self.augment(self.image)
        rows = self.rows + [SKIPPED] * (self.shape[0] - len(self.rows))
        return torch.tensor(rows, dtype=torch.float64)


def apply_rand_augment(images: torch.Tensor, params: torch.Tensor, fill: Sequence[int]) -> torch.Tensor:
    """timm's RandAugment on a batch, by the workers' draws. images uint8 (B, C, H, W); params (B, L, 3)
    from `RandAugmentDraws.draw`; fill: the geometric ops' fill colour (timm's img_mean, C ints).

    Layer by layer, each op runs once on the samples that drew it (index_select / index_copy), with
    their own arguments; all geometric ops of a layer run as one affine resampling per interpolation.
    Syncs once per layer and once per op present in it. Returns a new uint8 (B, C, H, W)."""
    out = images.clone()
    fill_t = torch.as_tensor(fill, dtype=torch.float64, device=images.device).expand(images.shape[1])
    params = params.to(images.device, torch.float64)
    for layer in range(params.shape[1]):
        op_ids, level = params[:, layer, 0].round().long(), params[:, layer, 1]
        resample = params[:, layer, 2].round().long()
        present = torch.unique(op_ids * 8 + resample + 1).tolist()  # (op, resample) pairs: the layer's sync
        geometric = set()
        for op, code in {(k // 8, k % 8 - 1) for k in present}:
            if op >= 0 and DEVICE_OPS[op] in GEOMETRIC_OPS:
                geometric.add(code)
            elif op >= 0:
                idx = (op_ids == op).nonzero()[:, 0]
                out.index_copy_(0, idx, PIXEL_OPS[DEVICE_OPS[op]](out.index_select(0, idx), level[idx]))
        if geometric:
            _geometric_layer(out, op_ids, level, resample, sorted(geometric), fill_t)
    return out


def _geometric_layer(out, op_ids, level, resample, codes, fill) -> None:
    """Every geometric op of one layer, in place: one affine matrix per sample, one resampling per
    interpolation code present."""
    height, width = out.shape[-2:]
    matrix = torch.zeros(len(op_ids), 6, dtype=torch.float64, device=out.device)
    is_geometric = torch.zeros_like(op_ids, dtype=torch.bool)
    for name, to_matrix in GEOMETRIC_OPS.items():
        mine = op_ids == DEVICE_OPS.index(name)
        matrix = torch.where(mine[:, None], to_matrix(level, width, height), matrix)
        is_geometric |= mine
    for code in codes:
        idx = (is_geometric & (resample == code)).nonzero()[:, 0]
        out.index_copy_(0, idx, ops.affine(out.index_select(0, idx), matrix[idx], code, fill))


def draw_erasing(probability: float, count: int, size, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, max_aspect: float = None, min_count: int = 1) -> torch.Tensor:
    """timm's RandomErasing draws for one view (`RandomErasing(probability, min_area, max_area,
    min_aspect, max_aspect, max_count=count, min_count)` on a `size` image): (count, 4) int64 boxes
    [top, left, h, w], zero rows for boxes not drawn or not placed.

    Re-implemented because timm's only erases in place; this follows `RandomErasing._erase` call for
    call on Python's `random` (the probability, the count when min_count < count, then per box up to
    10 tries of area and log-aspect, and top and left for the first that fits), so the stream stays
    timm's. It does not draw timm's fill noise from torch; `erase` makes its own from a key.
    """
    height, width = (size, size) if isinstance(size, int) else size
    boxes = [[0, 0, 0, 0] for _ in range(count)]
    if random.random() > probability:
        return torch.tensor(boxes, dtype=torch.int64).reshape(count, 4)
    log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
    n = min_count if min_count == count else random.randint(min_count, count)
    area = height * width
    for i in range(n):
        for _ in range(10):
            target_area = random.uniform(min_area, max_area) * area / n
            aspect = math.exp(random.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                boxes[i] = [random.randint(0, height - h), random.randint(0, width - w), h, w]
                break
    return torch.tensor(boxes, dtype=torch.int64).reshape(count, 4)


_NOISE = 0x68E31DA4  # salts: per-pixel noise and per-box colours are separate streams of a key
_COLOUR = 0xB5297A4D


def normal_noise(keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 (N, M), a pure function of (keys[n], index[n, m]): Box-Muller on two
    `hash32` draws, made on the tensors' device. keys (N,) int64 (32-bit), index (N, M) int64 >= 0."""
    k = hash32(keys.long())[:, None]
    u1, u2 = (((hash32(hash32(2 * index + s) ^ k) >> 8).float() + 0.5) * 2.0 ** -24 for s in (0, 1))  # (0, 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def erase(images: torch.Tensor, boxes: torch.Tensor, keys: torch.Tensor, mode: str) -> torch.Tensor:
    """timm's random erasing of a normalised batch (B, C, H, W) by the workers' boxes (B, K, 4) [top,
    left, h, w]. mode 'pixel': per-pixel N(0, 1); 'rand': one N(0, 1) per box and channel; 'const': 0.

    The noise is a function of (keys[b], channel, pixel) (or box), not of torch's RNG, so a view's
    erasing is the same on 1 or N processes and after a resume. Where boxes overlap the later one
    wins, as in timm. Syncs once. Returns a new tensor."""
    b_, c_, height, width = images.shape
    dev = images.device
    top, left, h, w = boxes.to(dev).round().long().unbind(-1)  # (B, K) each
    ys, xs = torch.arange(height, device=dev), torch.arange(width, device=dev)
    in_y = (ys >= top[..., None]) & (ys < (top + h)[..., None])  # (B, K, H)
    in_x = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (B, K, W)
    number = torch.arange(1, boxes.shape[1] + 1, device=dev)[None, :, None, None]
    owner = ((in_y[..., :, None] & in_x[..., None, :]) * number).amax(1)  # (B, H, W): last box + 1, or 0
    b, y, x = owner.nonzero(as_tuple=True)
    channels = torch.arange(c_, device=dev)
    keys = keys.to(dev).long()
    if mode == "pixel":
        values = normal_noise(keys[b] ^ _NOISE, (channels[None] * height + y[:, None]) * width + x[:, None])
    elif mode == "rand":
        colours = normal_noise(keys ^ _COLOUR, torch.arange(boxes.shape[1] * c_, device=dev).expand(b_, -1))
        values = colours.reshape(b_, -1, c_)[b, owner[b, y, x] - 1]
    elif mode == "const":
        values = torch.zeros(len(b), c_, device=dev)
    else:
        raise ConfigError(f"data.remode={mode!r}: random erasing fills with pixel, rand or const")
    out = images.clone()
    out.permute(0, 2, 3, 1)[b, y, x] = values.to(images.dtype)
    return out
