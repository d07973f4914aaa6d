"""timm's RandAugment ops as batch tensor ops on uint8 images, with Pillow's arithmetic.

Every op takes `x` uint8 (N, C, H, W) (C = 1 or 3) and one argument per sample, `level` (N,)
float64, exactly as timm's `level_fn` computed it, and returns uint8 (N, C, H, W). Each follows the
Pillow 13 C code that timm's PIL op runs, operation for operation, so that the results are equal
(tests/test_device_augment.py):

- lookup-table ops (invert, posterize, solarize, solarize_add, autocontrast, equalize) build a
  (N, C, 256) table per sample as `ImageOps` does and gather through it;
- enhance ops blend with a degenerate image as `Image.blend` does: float32 `deg + f * (img - deg)`,
  clipped and truncated; the degenerates are `convert("L")` (16-bit fixed-point luma), the rounded
  mean of that luma, black, and the 3x3 SMOOTH filter (float32, borders copied);
- geometric ops are Pillow's `transform(AFFINE)`: output pixel (x, y) samples the input at
  (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f), in float64, with pixel centres at
  integer + .5 (Pillow's convention, not `grid_sample`'s); a sample outside [0, W) x [0, H) takes
  the fill colour, neighbours past the border repeat the edge; bicubic is Pillow's a = -1 kernel
  (not torch's a = -0.75); values are truncated, not rounded, as Pillow does. Nearest uses the same
  float64 map, where Pillow uses 16.16 fixed point: a few pixels on a boundary may take the
  neighbouring source pixel.
"""
from __future__ import annotations

import math

import torch

NEAREST, BILINEAR, BICUBIC = 0, 2, 3  # Pillow's resample codes, as timm's `interpolation` hparam holds them


def _levels(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(256, device=x.device)  # (256,) int64: the table's input values


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x uint8 (N, C, H, W) through per-sample, per-channel tables lut (N, C, 256) -> uint8."""
    n, c, h, w = x.shape
    lut = lut.clamp(0, 255).to(torch.uint8).expand(n, c, 256)
    return lut.gather(2, x.reshape(n, c, h * w).long()).reshape(n, c, h, w)


def invert(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Keep `level` high bits; 0 bits gives black (distill's guard) and >= 8 keeps the image."""
    shift = (8 - level.round().long()).clamp(0, 8)[:, None, None]  # (N, 1, 1)
    v = _levels(x)
    return apply_lut(x, (v >> shift) << shift)


def solarize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Invert the values >= threshold `level`."""
    v = _levels(x).double()
    return apply_lut(x, torch.where(v < level[:, None, None], v, 255 - v).long())


def solarize_add(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Add `level` to the values below 128, capped at 255 (timm's `thresh` is always its default)."""
    v = _levels(x).double()
    return apply_lut(x, torch.where(v < 128, (v + level[:, None, None]).clamp(max=255), v).long())


def autocontrast(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Stretch each channel's [min, max] to [0, 255]: `ImageOps.autocontrast` in float64, truncated."""
    lo = x.amin(dim=(2, 3)).double()[..., None]  # (N, C, 1)
    hi = x.amax(dim=(2, 3)).double()[..., None]
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)  # not `255.0 / t`: torch makes that 255 * (1 / t)
    lut = (_levels(x).double() * scale + (-lo * scale)).trunc()
    return apply_lut(x, torch.where(hi > lo, lut, _levels(x).double()).long())


def histogram(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 256) int64 counts of each value per sample and channel."""
    n, c = x.shape[:2]
    base = torch.arange(n * c, device=x.device).reshape(n, c, 1) * 256
    return torch.bincount((x.reshape(n, c, -1).long() + base).flatten(), minlength=n * c * 256).reshape(n, c, 256)


def equalize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """`ImageOps.equalize`: step = (pixels - count of the top value) // 255; value i goes to
    (step // 2 + pixels below i) // step, identity where step is 0 (at most one value present)."""
    h = histogram(x)
    total = x.shape[2] * x.shape[3]
    top = 255 - (h.flip(-1) > 0).long().argmax(-1, keepdim=True)  # (N, C, 1): the highest value present
    step = (total - h.gather(-1, top)) // 255
    below = h.cumsum(-1) - h  # pixels strictly below each value
    lut = (step // 2 + below) // step.clamp(min=1)
    return apply_lut(x, torch.where(step > 0, lut, _levels(x)))


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`Image.blend(degenerate, x, factor)`: float32 `deg + f * (x - deg)`, clipped, truncated."""
    f = factor.float()[:, None, None, None]
    diff = (x.int() - degenerate.int()).float()
    return (degenerate.float() + f * diff).clamp(0, 255).to(torch.uint8)


def luma(x: torch.Tensor) -> torch.Tensor:
    """`convert("L")`: (N, 1, H, W) uint8, Pillow's fixed-point ITU-R 601-2 luma (the image if C = 1)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)[:, None].to(torch.uint8)


def color(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return blend(luma(x).expand_as(x), x, level)


def contrast(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Blend with the mean luma, rounded half up as `int(mean + 0.5)` (the mean in float64)."""
    y = luma(x)
    mean = (y.flatten(1).sum(1).double() / y[0].numel() + 0.5).floor()
    return blend(mean[:, None, None, None].expand_as(x), x, level)


def brightness(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros_like(x), x, level)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """`filter(ImageFilter.SMOOTH)`: 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 in float32, summed in
    Pillow's order (0.5, row below, row, row above), clipped and truncated; border pixels copied."""
    if x.shape[2] < 3 or x.shape[3] < 3:
        return x  # Pillow returns a copy of an image smaller than the kernel
    f = x.float()
    k1 = torch.tensor(1.0) / 13  # float32, as Pillow divides its float kernel by the float divisor
    k5 = torch.tensor(5.0) / 13

    def row(r: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:  # r: (N, C, H-2, W)
        return r[..., :-2] * k1 + r[..., 1:-1] * centre + r[..., 2:] * k1

    ss = 0.5 + row(f[:, :, 2:], k1)
    ss = ss + row(f[:, :, 1:-1], k5)
    ss = ss + row(f[:, :, :-2], k1)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = ss.clamp(0, 255).to(torch.uint8)
    return out


def sharpness(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return blend(smooth(x), x, level)


# ----- geometric ops: each gives Pillow's AFFINE data (a, b, c, d, e, f) per sample, (N, 6) float64

def _matrix(level: torch.Tensor, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    """(N, 6) from `level`-shaped tensors and Python floats; a float is filled in on `level`'s device
    (`full_like`), never copied there from the host."""
    return torch.stack([v.double() if torch.is_tensor(v) else torch.full_like(level, v, dtype=torch.float64)
                        for v in (a, b, c, d, e, f)], 1)


def shear_x_matrix(level, width, height):
    return _matrix(level, b=level)


def shear_y_matrix(level, width, height):
    return _matrix(level, d=level)


def translate_x_matrix(level, width, height):
    return _matrix(level, c=level)


def translate_y_matrix(level, width, height):
    return _matrix(level, f=level)


def translate_x_rel_matrix(level, width, height):
    return _matrix(level, c=level * width)  # timm: pixels = pct * img.size[0]


def translate_y_rel_matrix(level, width, height):
    return _matrix(level, f=level * height)


def _round15(v: torch.Tensor) -> torch.Tensor:
    """Python's round(v, 15) for |v| <= 1, up to a last-bit tie that float64 cannot see."""
    return torch.round(v * 1e15) / 1e15


def rotate_matrix(level, width, height):
    """`Image.rotate(level)` about the centre (w / 2, h / 2), as Pillow builds its inverse matrix."""
    angle = -(torch.remainder(level, 360.0) * (math.pi / 180.0))  # -math.radians(angle % 360)
    cos, sin = _round15(torch.cos(angle)), _round15(torch.sin(angle))
    cx, cy = width / 2, height / 2
    c = (cos * -cx + sin * -cy + 0.0) + cx
    f = (-sin * -cx + cos * -cy + 0.0) + cy
    return torch.stack([cos, sin, c, -sin, cos, f], 1)


def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (a = -1), in its order of operations (-v1 + v2 is v2 - v1 exactly):
    p2 = -v1 + v3, p3 = 2 (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4, v = v2 + d (p2 + d (p3 + d p4)).
    In place where it can (v3 is consumed): on the CPU this op's time is memory traffic."""
    p4 = (v2 - v1).sub_(v3).add_(v4)
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p2 = v3.sub_(v1)
    return p4.mul_(d).add_(p3).mul_(d).add_(p2).mul_(d).add_(v2)


class _Taps:
    """Source values at integer positions, for every channel: rows and cols (N, P) int64 are clamped
    as Pillow's XCLIP / YCLIP repeat the border. One index_select on the flat image per tap (twice
    as fast on the CPU as a gather with an index expanded over channels)."""

    def __init__(self, x: torch.Tensor):
        n, c, self.height, self.width = x.shape
        self.flat = x.double().reshape(-1)  # (N*C*H*W,)
        self.base = torch.arange(n * c, device=x.device).reshape(n, c, 1) * (self.height * self.width)

    def row(self, y: torch.Tensor) -> torch.Tensor:
        return y.clamp(0, self.height - 1) * self.width

    def col(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, self.width - 1)

    def __call__(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """row from `row()`, col from `col()`, (N, P) -> (N, C, P) float64."""
        idx = self.base + (row + col)[:, None]
        return self.flat.index_select(0, idx.flatten()).reshape(idx.shape)


def _sample(x, xin, yin, resample):
    """x uint8 (N, C, H, W) at Pillow's source positions xin, yin (N, P) float64 -> (N, C, P) float64,
    before the bounds test."""
    taps = _Taps(x)
    if resample == NEAREST:
        return taps(taps.row(yin.floor().long()), taps.col(xin.floor().long()))
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = xs.floor(), ys.floor()
    dx, dy = (xs - x0)[:, None], (ys - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    if resample == BILINEAR:  # Pillow's BILINEAR: a + (b - a) d, along x then y
        cols = [taps.col(x0 + i) for i in (0, 1)]
        v1, v2 = ((b.sub_(a).mul_(dx).add_(a)) for a, b in ((taps(taps.row(y0 + j), c) for c in cols) for j in (0, 1)))
        return v2.sub_(v1).mul_(dy).add_(v1)
    if resample != BICUBIC:
        raise ValueError(f"resample={resample}: the device ops have nearest (0), bilinear (2) and bicubic (3)")
    cols = [taps.col(x0 + i) for i in (-1, 0, 1, 2)]
    rows = [_cubic(*(taps(taps.row(y0 + j), c) for c in cols), dx) for j in (-1, 0, 1, 2)]
    return _cubic(*rows, dy)


CPU_CHUNK = 1 << 18  # values per affine pass on the CPU; see `affine`


def affine(x: torch.Tensor, matrix: torch.Tensor, resample: int, fill: torch.Tensor) -> torch.Tensor:
    """`Image.transform(size, AFFINE, matrix[n], resample, fillcolor=fill)` for each sample.

    x uint8 (N, C, H, W); matrix (N, 6) float64; fill (C,) values for outside samples. On the CPU,
    where this op is memory traffic, samples go in chunks of ~CPU_CHUNK values (one 224 px image):
    a whole batch's float64 temporaries (77 MB each at 64 x 224 px) leave the caches and fault in
    fresh pages, several times slower (docs/data.md). Other devices take the batch at once."""
    n, c, height, width = x.shape
    step = max(1, CPU_CHUNK // (c * height * width)) if x.device.type == "cpu" else n
    fill = fill.to(x.device, torch.float64)[None, :, None]
    if step >= n:
        return _affine(x, matrix, resample, fill)
    return torch.cat([_affine(x[i:i + step], matrix[i:i + step], resample, fill) for i in range(0, n, step)])


def _affine(x, matrix, resample, fill):
    n, c, height, width = x.shape
    dev = x.device
    px = (torch.arange(width, device=dev, dtype=torch.float64) + 0.5)[None, None, :]  # (1, 1, W)
    py = (torch.arange(height, device=dev, dtype=torch.float64) + 0.5)[None, :, None]  # (1, H, 1)
    a, b, cc, d, e, f = (m[:, None, None] for m in matrix.double().unbind(1))
    xin = (a * px + b * py + cc).reshape(n, -1)  # (N, H*W), Pillow's `a0 * xin + a1 * yin + a2`
    yin = (d * px + e * py + f).reshape(n, -1)
    inside = ((xin >= 0) & (xin < width) & (yin >= 0) & (yin < height))[:, None]  # (N, 1, H*W)
    v = torch.where(inside, _sample(x, xin, yin, resample), fill)
    return v.clamp(0, 255).to(torch.uint8).reshape(n, c, height, width)
