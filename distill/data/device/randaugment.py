"""timm's RandAugment and random erasing, drawn per view in the workers and applied per batch on the
training device.

A worker, right after its crop and flip and under the view's seeding (`distill.data.seeds`), makes
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

from distill.data.device import ops
from distill.data.seeds import hash32
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


def to_device(array, device) -> torch.Tensor:
    """A host array (numpy or tensor) on `device`; through pinned memory to a GPU, so the copy is
    asynchronous and the host never waits for the device."""
    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if t.device.type == "cpu" and torch.device(device).type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def host(t: torch.Tensor) -> np.ndarray:
    """A host tensor's values as numpy; a device tensor's cost one copy back (a caller that plans on the
    host passes host tensors: `DeviceAugment` does)."""
    return (t if t.device.type == "cpu" else t.cpu()).detach().numpy()


def apply_rand_augment(images: torch.Tensor, params: torch.Tensor, fill: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
    """timm's RandAugment on a batch, by the workers' draws. images uint8 (B, C, H, W); params (B, L, 3)
    from `RandAugmentDraws.draw`, best on the host; fill: the geometric ops' fill colour (timm's img_mean,
    C ints).

    Layer by layer, each op runs once on the samples that drew it (index_select / index_copy), with
    their own arguments; all geometric ops of a layer run as one affine resampling per interpolation.
    Which samples take which op is read on the host, from the draws; the sample indices, levels and
    affine matrices of the whole batch then go to the device in one copy each, so nothing waits for the
    device. Returns a new uint8 (B, C, H, W)."""
    out = images.clone()
    dev = images.device
    fill_t = (fill if isinstance(fill, torch.Tensor) else torch.as_tensor(fill, dtype=torch.float64, device=images.device)
              ).expand(images.shape[1])  # DeviceAugment hands it over on the device, once
    plan = host(params).astype(np.float64)  # (B, L, 3)
    op_ids, resample = np.rint(plan[..., 0]).astype(np.int64), np.rint(plan[..., 2]).astype(np.int64)
    level_host = torch.from_numpy(np.ascontiguousarray(plan[..., 1]))  # (B, L) float64
    geometric_ids = [DEVICE_OPS.index(name) for name in GEOMETRIC_OPS]
    runs, chunks, at = [], [], 0  # runs: (layer, op name or resample code, start, end) in `chunks`
    for layer in range(plan.shape[1]):
        ids = op_ids[:, layer]
        for op in np.unique(ids).tolist():
            if op >= 0 and DEVICE_OPS[op] in PIXEL_OPS:
                chunks.append(np.flatnonzero(ids == op))
                runs.append((layer, DEVICE_OPS[op], at, at + len(chunks[-1])))
                at += len(chunks[-1])
        geometric = np.isin(ids, geometric_ids)
        for code in np.unique(resample[geometric, layer]).tolist():
            chunks.append(np.flatnonzero(geometric & (resample[:, layer] == code)))
            runs.append((layer, code, at, at + len(chunks[-1])))
            at += len(chunks[-1])
    if not runs:
        return out
    index = to_device(np.concatenate(chunks), dev)  # (sum of run sizes,) int64
    level = to_device(level_host, dev)
    matrices = None
    if any(isinstance(name, int) for _, name, _, _ in runs):
        height, width = images.shape[-2:]
        matrices = to_device(torch.stack([_matrices(torch.from_numpy(op_ids[:, layer]), level_host[:, layer],
                                                    width, height) for layer in range(plan.shape[1])]), dev)
    for layer, name, start, end in runs:
        idx = index[start:end]
        if isinstance(name, str):
            out.index_copy_(0, idx, PIXEL_OPS[name](out.index_select(0, idx), level[:, layer].index_select(0, idx)))
        else:  # every geometric op of the layer drawn with this interpolation, one resampling
            out.index_copy_(0, idx, ops.affine(out.index_select(0, idx), matrices[layer].index_select(0, idx), name,
                                               fill_t))
    return out


def _matrices(op_ids: torch.Tensor, level: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's AFFINE data (B, 6) float64 of one layer, computed on the host from the draws: each
    geometric op's matrix where a sample drew it, zeros elsewhere."""
    matrix = torch.zeros(len(op_ids), 6, dtype=torch.float64)
    for name, to_matrix in GEOMETRIC_OPS.items():
        mine = op_ids == DEVICE_OPS.index(name)
        matrix = torch.where(mine[:, None], to_matrix(level, width, height), matrix)
    return matrix


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
    wins, as in timm. `boxes` and `keys` best on the host: the number of erased pixels is counted there,
    so finding them (`nonzero_static`) does not wait for the device. Returns a new tensor."""
    b_, c_, height, width = images.shape
    dev = images.device
    boxes_host = np.rint(host(boxes)).astype(np.int64)  # (B, K, 4)
    top, left, h, w = to_device(boxes_host, dev).unbind(-1)  # (B, K) each
    ys, xs = torch.arange(height, device=dev), torch.arange(width, device=dev)
    in_y = (ys >= top[..., None]) & (ys < (top + h)[..., None])  # (B, K, H)
    in_x = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (B, K, W)
    number = torch.arange(1, boxes.shape[1] + 1, device=dev)[None, :, None, None]
    owner = ((in_y[..., :, None] & in_x[..., None, :]) * number).amax(1)  # (B, H, W): last box + 1, or 0
    b, y, x = torch.nonzero_static(owner, size=erased_pixels(boxes_host, height, width)).unbind(1)
    channels = torch.arange(c_, device=dev)
    keys = to_device(keys, dev).long()
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


def erased_pixels(boxes: np.ndarray, height: int, width: int) -> int:
    """How many pixels of a (height, width) batch the boxes (B, K, 4) [top, left, h, w] cover, overlaps
    counted once: what `owner.nonzero()` in `erase` would find, known without asking the device."""
    rows = np.clip(boxes[..., 0] + boxes[..., 2], 0, height) - np.clip(boxes[..., 0], 0, height)
    cols = np.clip(boxes[..., 1] + boxes[..., 3], 0, width) - np.clip(boxes[..., 1], 0, width)
    area = np.maximum(rows, 0) * np.maximum(cols, 0)  # (B, K)
    total = 0
    for b in range(len(boxes)):
        live = np.flatnonzero(area[b] > 0)
        if len(live) <= 1:
            total += int(area[b].sum())
            continue
        mask = np.zeros((height, width), dtype=bool)  # overlapping boxes: count their union
        for t, l, h, w in boxes[b, live].tolist():
            mask[max(t, 0):max(t + h, 0), max(l, 0):max(l + w, 0)] = True
        total += int(mask.sum())
    return total
