"""RandAugment and random erasing on the device (distill/data/device/randaugment.py, device_ops.py)
against timm's PIL ops and timm's own draws, on small structured + noisy images.

Measured (Pillow 13.0, torch 2.14 CPU, 48x40 RGB): every op equals timm's PIL op exactly, the
geometric ones with bicubic and bilinear too; nearest differs in at most 1 pixel in 1920 on these
images (Pillow maps nearest in 16.16 fixed point, we in float64). Replaying the draws on the device
equals timm's RandAugment image exactly for every seed tested. With the params cast to float32
instead, 59 of 200 such views differed (1.3 % of pixels, some by up to 248 levels):
hence float64 draws.
"""
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as aa
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

from distill.data.device import ops
from distill.data.device.randaugment import (DEVICE_OPS, GEOMETRIC_OPS, PIXEL_OPS, RandAugmentDraws, apply_rand_augment,
                                         draw_erasing, erase, normal_noise)
from distill.data.transforms import guard_posterize, posterize
from distill.data.seeds import seed_view_rngs
from distill.errors import ConfigError

H, W = 40, 48
FILL = (124, 116, 104)
PIL_OPS = {  # device op -> timm's PIL function, called as fn(img, *level, fillcolor=, resample=)
    "AutoContrast": aa.auto_contrast, "Equalize": aa.equalize, "Invert": aa.invert, "Posterize": posterize,
    "Solarize": aa.solarize, "SolarizeAdd": aa.solarize_add, "Color": aa.color, "Contrast": aa.contrast,
    "Brightness": aa.brightness, "Sharpness": aa.sharpness, "Rotate": aa.rotate, "ShearX": aa.shear_x,
    "ShearY": aa.shear_y, "TranslateX": aa.translate_x_abs, "TranslateY": aa.translate_y_abs,
    "TranslateXRel": aa.translate_x_rel, "TranslateYRel": aa.translate_y_rel,
}
LEVELS = {  # arguments in (and at the edges of) the ranges timm's level_fns give, both signs
    "AutoContrast": [0], "Equalize": [0], "Invert": [0], "Posterize": [0, 1, 2, 4, 7, 8],
    "Solarize": [0, 26, 128, 230, 256], "SolarizeAdd": [0, 11, 99, 110],
    "Color": [0.1, 0.37, 1.0, 1.13, 1.9], "Contrast": [0.1, 0.37, 1.0, 1.13, 1.9],
    "Brightness": [0.1, 0.37, 1.0, 1.13, 1.9], "Sharpness": [0.1, 0.37, 1.0, 1.13, 1.9],
    "Rotate": [0.0, 27.3, -27.3, 12.345678, -3.1, 90.0], "ShearX": [0.27, -0.27, 0.1234567, -0.3],
    "ShearY": [0.27, -0.27, 0.1234567], "TranslateX": [13.7, -5.0, 3.3333], "TranslateY": [13.7, -5.0, 3.3333],
    "TranslateXRel": [0.4, -0.4, 0.123456], "TranslateYRel": [0.4, -0.4, 0.123456],
}
INTEGER_ARGS = ("Posterize", "Solarize", "SolarizeAdd")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Gradients, a saturated block and noise: every op changes it, no op sees a flat image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 5 + seed, yy * 6, (xx + yy) * 3], -1) % 256 + rng.normal(0, 20, (H, W, 3))
    base[5 + seed % 7:15, 10:20] = [250, 10, 30]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    return img.convert(mode)


def _tensor(img: Image.Image) -> torch.Tensor:
    a = np.array(img)
    return torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1).contiguous()  # (C, H, W)


def _pil_op(img, name, level, resample=Image.Resampling.BICUBIC, fill=FILL):
    args = () if name in ("AutoContrast", "Equalize", "Invert") else (int(level) if name in INTEGER_ARGS else level,)
    return PIL_OPS[name](img, *args, fillcolor=fill, resample=resample)


def _device_op(x, name, levels, resample=ops.BICUBIC, fill=FILL):
    """Run one op on a batch: one row per sample, [op id, level, resample]."""
    params = torch.tensor([[[DEVICE_OPS.index(name), lv, resample if name in GEOMETRIC_OPS else -1]] for lv in levels],
                          dtype=torch.float64)
    return apply_rand_augment(x.expand(len(levels), -1, -1, -1), params, fill[:x.shape[1]])


def test_every_op_equals_timms_pil_op():
    """One batch per op, one level per sample, against timm's function on the PIL image."""
    img = _image()
    x = _tensor(img)[None]
    assert set(PIL_OPS) == set(DEVICE_OPS) == set(LEVELS)
    for resample in (ops.BICUBIC, ops.BILINEAR):
        for name in DEVICE_OPS:
            if name in PIXEL_OPS and resample != ops.BICUBIC:
                continue
            out = _device_op(x, name, LEVELS[name], resample)
            for level, got in zip(LEVELS[name], out):
                want = _tensor(_pil_op(img, name, level, resample))
                assert torch.equal(got, want), (name, level, resample, (got.int() - want.int()).abs().max())


def test_histogram_ops_over_many_value_ranges():
    """AutoContrast's float64 table and Equalize's integer one hinge on each channel's range and
    histogram: 64 images with random per-channel ranges and skews (one channel constant)."""
    g = torch.Generator().manual_seed(0)
    lo = torch.randint(0, 120, (64, 3, 1, 1), generator=g)
    hi = lo + torch.randint(1, 136, (64, 3, 1, 1), generator=g)
    x = (lo + (hi - lo + 1) * torch.rand(64, 3, H, W, generator=g) ** 2).clamp(max=255).to(torch.uint8)
    x[0, 1] = 77
    for name in ("AutoContrast", "Equalize"):
        out = apply_rand_augment(x, torch.tensor([[[DEVICE_OPS.index(name), 0, -1]]] * 64, dtype=torch.float64), FILL)
        for i in range(64):
            want = _tensor(_pil_op(Image.fromarray(x[i].permute(1, 2, 0).numpy()), name, 0))
            assert torch.equal(out[i], want), (name, i)


def test_nearest_matches_but_for_pillows_fixed_point():
    img = _image()
    x = _tensor(img)[None]
    for name in GEOMETRIC_OPS:
        out = _device_op(x, name, LEVELS[name], ops.NEAREST)
        for level, got in zip(LEVELS[name], out):
            want = _tensor(_pil_op(img, name, level, Image.Resampling.NEAREST))
            differ = (got != want).any(0).float().mean().item()
            assert differ <= 0.002, (name, level, differ)  # measured: <= 1 pixel in 1920


def test_a_wrong_sign_or_centre_would_fail():
    """The comparison above can fail: the opposite shear, or a rotation about another point, differs."""
    img = _image()
    x = _tensor(img)[None]
    assert not torch.equal(_device_op(x, "ShearX", [-0.27])[0], _tensor(_pil_op(img, "ShearX", 0.27)))
    assert not torch.equal(_device_op(x, "Rotate", [-12.0])[0], _tensor(_pil_op(img, "Rotate", 12.0)))
    shifted = ops.rotate_matrix(torch.tensor([12.0], dtype=torch.float64), W + 1, H)  # centre half a pixel off
    got = ops.affine(x, shifted, ops.BICUBIC, torch.tensor(FILL))[0]
    assert not torch.equal(got, _tensor(_pil_op(img, "Rotate", 12.0)))


def test_grayscale_images():
    """L images (1 channel): Color is the identity, Contrast blends with the mean, fill is one value."""
    img = _image(mode="L")
    x = _tensor(img)[None]
    for name, level in (("Color", 0.3), ("Contrast", 0.3), ("Sharpness", 1.8), ("Equalize", 0), ("Rotate", 20.0)):
        want = _tensor(_pil_op(img, name, level, fill=(124,)))
        assert torch.equal(_device_op(x, name, [level], fill=(124,))[0], want), name


def _timm_augment(spec: str, interpolation: str):
    _, secondary, _ = create_transform(44, is_training=True, auto_augment=spec, interpolation=interpolation,
                                       separate=True)
    guard_posterize(secondary)  # what distill's workers run (Pillow 13 refuses 0 bits)
    return secondary


def _rng_state():
    state = np.random.get_state()
    return random.getstate(), state[1].tolist(), state[2]


@pytest.mark.parametrize("spec, interpolation", [("rand-m9-mstd0.5-inc1", "bicubic"), ("rand-m9-n2", "bicubic"),
                                                 ("rand-m9-mstd0.5-inc1", "random"), ("original-mstd0.5", "bilinear")])
def test_draws_are_timms_and_replay_its_image(spec, interpolation):
    """Under the view's seeding the draws leave both RNGs where timm's call does; the recorded ops,
    applied with timm's PIL functions or on the device, give timm's image exactly."""
    timm_augment = _timm_augment(spec, interpolation)
    draws = pickle.loads(pickle.dumps(RandAugmentDraws(timm_augment)))  # as spawned loader workers get it
    img = _image()
    wants, params = [], []
    for s in range(50):
        seed_view_rngs(s)
        wants.append(_tensor(timm_augment(img)))
        after_timm = _rng_state()
        seed_view_rngs(s)
        params.append(draws.draw())
        assert _rng_state() == after_timm, s
        replay = img
        for op_id, level, resample in params[-1].tolist():
            if op_id >= 0:
                replay = _pil_op(replay, DEVICE_OPS[int(op_id)], level, int(max(resample, 0)), draws.fill)
        assert torch.equal(_tensor(replay), wants[-1]), (s, params[-1])
    params = torch.stack(params)
    assert params.shape == (50, *draws.shape) and params.dtype == torch.float64
    assert (params[..., 0] < 0).any() and len(params[..., 0].unique()) >= 10  # skips and most ops were drawn
    out = apply_rand_augment(_tensor(img)[None].expand(50, -1, -1, -1), params, draws.fill)
    assert torch.equal(out, torch.stack(wants))


@pytest.mark.parametrize("make, op", [
    (lambda: _timm_augment("augmix-m5-w4-d2", "bicubic"), "AugMixAugment"),
    (lambda: _timm_augment("rand-m9-t3a", "bicubic"), "ColorJitter"),  # timm keeps colour jitter with 3a
    (lambda: aa.rand_augment_transform("rand-m9-t3a", {"translate_const": 20, "img_mean": FILL}), "GaussianBlur"),
    (lambda: _timm_augment("rand-m9-n2", "lanczos"), "data.interpolation: .* not lanczos"),
])
def test_an_augmentation_the_device_lacks_is_one_config_error(make, op):
    with pytest.raises(ConfigError, match=op) as e:
        RandAugmentDraws(make())
    assert "\n" not in str(e.value) and str(e.value).startswith("data.")


def _mask(boxes: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    for top, left, h, w in boxes.tolist():
        mask[top:top + h, left:left + w] = True
    return mask


@pytest.mark.parametrize("count", [1, 3])
def test_erasing_draws_are_timms_boxes(count):
    """timm's RandomErasing on a NaN image erases exactly our boxes, and leaves `random` where we do."""
    timm_erasing = RandomErasing(0.5, mode="pixel", max_count=count, device="cpu")
    seen = set()
    for s in range(100):
        seed_view_rngs(s)
        img = torch.full((3, H, W), float("nan"))
        timm_erasing(img)
        after_timm = random.getstate()
        seed_view_rngs(s)
        boxes = draw_erasing(0.5, count, (H, W))
        assert random.getstate() == after_timm, s
        assert boxes.shape == (count, 4) and torch.equal(_mask(boxes), img[0].isfinite()), s
        seen.add(int((boxes[:, 2] > 0).sum()))
    assert seen == ({0, 1} if count == 1 else {0, 1, 2, 3})  # no erasing, and every count, were drawn


def test_noise_is_keyed_standard_normal():
    index = torch.arange(200_000)[None]
    a, b = normal_noise(torch.tensor([7]), index), normal_noise(torch.tensor([8]), index)
    assert torch.equal(a, normal_noise(torch.tensor([7]), index))  # a pure function of (key, index)
    assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01
    assert abs((a * b).mean().item()) < 0.01  # keys 7 and 8 are independent streams
    assert 0.0005 < (a.abs() > 3.29).float().mean().item() < 0.0015  # normal tails (two-sided 0.1 %)


def test_erase_fills_only_the_boxes_by_mode():
    images = torch.randn(2, 3, H, W) * 0.1 + 5
    boxes = torch.tensor([[[2, 3, 10, 12], [5, 8, 10, 12]], [[0, 0, 0, 0], [30, 40, 10, 8]]])
    keys = torch.tensor([11, 12])
    inside = torch.stack([_mask(b) for b in boxes])[:, None].expand_as(images)
    for mode in ("pixel", "rand", "const"):
        out = erase(images, boxes, keys, mode)
        assert torch.equal(out[~inside], images[~inside]) and (out[inside] < 4.5).all(), mode  # replaced: ~N(0, 1)
        assert torch.equal(out, erase(images, boxes, keys, mode))
    pixel, rand = erase(images, boxes, keys, "pixel"), erase(images, boxes, keys, "rand")
    assert not torch.equal(pixel, erase(images, boxes, keys + 1, "pixel"))  # another view, other noise
    assert len(pixel[0, 0, 2:12, 3:15].unique()) == 120  # per pixel
    assert len(rand[0, 0, 2:5, 3:15].unique()) == 1 and len(rand[0, :, 2, 3].unique()) == 3  # per box, channel
    assert rand[0, 0, 2, 3] != rand[0, 0, 10, 15] and rand[0, 0, 7, 10] == rand[0, 0, 10, 15]  # later box wins
    assert (erase(images, boxes, keys, "const")[inside] == 0).all()


def test_a_mixed_batch_equals_each_view_alone(monkeypatch):
    """Per-sample arguments are not mixed up: 24 views of 24 images, their draws applied as one
    batch and one by one (RandAugment with random interpolation, then pixel erasing). The CPU's
    affine chunks are cut to 2 images, so that path is checked too."""
    monkeypatch.setattr(ops, "CPU_CHUNK", 2 * 3 * H * W)
    draws = RandAugmentDraws(_timm_augment("rand-m9-mstd0.5-inc1", "random"))
    images = torch.stack([_tensor(_image(s)) for s in range(24)])
    params, boxes = [], []
    for s in range(24):
        seed_view_rngs(s)
        params.append(draws.draw())
        boxes.append(draw_erasing(1.0, 2, (H, W)))
    params, boxes, keys = torch.stack(params), torch.stack(boxes), torch.arange(24) * 1000
    batch = apply_rand_augment(images, params, draws.fill)
    alone = torch.cat([apply_rand_augment(images[i:i + 1], params[i:i + 1], draws.fill) for i in range(24)])
    assert torch.equal(batch, alone) and not torch.equal(batch, images)
    x = batch.float() / 255
    erased = erase(x, boxes, keys, "pixel")
    alone = [erase(x[i:i + 1], boxes[i:i + 1], keys[i:i + 1], "pixel") for i in range(24)]
    assert torch.equal(erased, torch.cat(alone))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_result():
    draws = RandAugmentDraws(_timm_augment("rand-m9-mstd0.5-inc1", "random"))
    images = torch.stack([_tensor(_image(s)) for s in range(32)])
    params = []
    for s in range(32):
        seed_view_rngs(s)
        params.append(draws.draw())
    params = torch.stack(params)
    cpu = apply_rand_augment(images, params, draws.fill)
    cuda = apply_rand_augment(images.cuda(), params.cuda(), draws.fill).cpu()
    # Expected equal: the same IEEE operations; only CUDA's float64 cos / sin may differ in a last bit
    # that rotate's rounding to 15 decimals does not absorb, which would move a few truncated levels.
    assert (cuda != cpu).float().mean().item() < 1e-3, (cuda.int() - cpu.int()).abs().max()
    boxes, keys = torch.tensor([[[2, 3, 10, 12]]]).expand(32, -1, -1), torch.arange(32)
    noise_cpu = erase(cpu.float(), boxes, keys, "pixel")
    assert (erase(cpu.float().cuda(), boxes.cuda(), keys.cuda(), "pixel").cpu() - noise_cpu).abs().max() < 1e-4
