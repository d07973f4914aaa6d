"""The real-image data path, in process: timm's per-sample transforms seeded per view, repeated
augmentation in the global order, timm Mixup's pair/elem modes, the posterize guard, bad input."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform

from conftest import noise_jpegs
from distill.data.augment import BatchAugment, Normalize
from distill.data.seeds import epoch_salt, epoch_views, seed_view_rngs, step_seed
from distill.cli import main
from distill.config import DataConfig
from distill.data.sources import load_split
from distill.errors import DataError
from distill.errors import ConfigError
from distill.data.loader import LoaderBatches, ShardedBatches
from distill.data.transforms import TrainViews, check_auto_augment, guard_posterize, posterize, train_transform

PLAIN = "recipes/fashion_mnist/plain_tiny.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """48 random 40x40 JPEGs in 3 classes, train and val."""
    return noise_jpegs(tmp_path_factory.mktemp("folder"), {"train": 48, "val": 6}, (40, 40), 3, seed=0)


RRC = dict(name="imagefolder", img_size=32, crop="rrc", auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5,
           aug_repeats=3)


def test_epoch_views_repeat_each_image_and_keep_the_epoch_length():
    assert torch.equal(epoch_views(100, 3, 2, repeats=1), torch.randperm(100, generator=torch.Generator().manual_seed(
        3 * 1_000_003 + 2)))
    views = epoch_views(100, 3, 2, repeats=3)
    assert len(views) == 100 and len(set(views.tolist())) == 100  # distinct view ids
    images = (views % 100).tolist()
    assert images[0] == images[1] == images[2] != images[3]  # repeats are adjacent: the same global batch
    assert views[1] - views[0] == 100 and views[2] - views[1] == 100  # repeat r of image i is r*N + i
    assert len(set(images)) == 34  # ceil(100 / 3) distinct images per epoch, as DeiT's RASampler


def test_views_are_the_same_in_one_and_two_processes_with_any_workers(folder):
    """Two ranks' batches (batch 4, 2 and 1 workers) concatenated = one rank's (batch 8, no worker),
    over two epochs, the second resumed mid-way; the three copies of an image differ."""
    cfg = DataConfig(root=str(folder), **RRC)
    split = load_split(cfg, train=True)
    views = TrainViews(split, train_transform(cfg, split.mean, split.std), seed=11)
    one = LoaderBatches(views, ShardedBatches(48, 8, 0, 1, 11, repeats=3), "cpu", num_workers=0)
    two = [LoaderBatches(views, ShardedBatches(48, 4, r, 2, 11, repeats=3), "cpu", num_workers=2 - r)
           for r in (0, 1)]
    n = 0
    for epoch, start in ((0, 0), (1, 2)):
        for b in (one, *two):
            b.sampler.set_epoch(epoch, start)
        for big, a, b in zip(one, *two):
            assert big[0].dtype == torch.float32 and big[0].shape == (8, 3, 32, 32)
            assert all(torch.equal(u, torch.cat([v, w])) for u, v, w in zip(big, a, b))
            n += 1
    assert n == 6 + 4
    one.sampler.set_epoch(0)
    x, _, ids = next(iter(one))
    same = [(i, j) for i in range(8) for j in range(i) if ids[i] % 48 == ids[j] % 48]
    assert same and all(not torch.equal(x[i], x[j]) for i, j in same)  # repeats are different views


def testposterize_guard_at_the_magnitude_that_fails(folder):
    """timm 1.0.31's `rand-m9-mstd0.5-inc1` asks Pillow 13 for 0 bits now and then: find such a draw
    for real, then check that the guarded transform gives what Pillow < 13 gave (a black image)."""
    image = Image.open(next((folder / "train" / "c0").iterdir())).convert("RGB")
    raw = rand_augment_transform("rand-m9-mstd0.5-inc1", {"translate_const": 14, "img_mean": (124, 116, 104)})
    failing = None
    for s in range(20000):
        seed_view_rngs(s)
        try:
            raw(image)
        except ValueError as e:
            assert "bits must be between" in str(e)
            failing = s
            break
    assert failing is not None, "the posterize failure was not reproduced"
    assert guard_posterize(raw) == 1  # the one PosterizeIncreasing op of the RandAugment set
    seed_view_rngs(failing)
    out = raw(image)
    assert out.size == image.size
    assert np.asarray(posterize(image, 0)).max() == 0 and posterize(image, 8) is image
    assert np.array_equal(np.asarray(posterize(image, 2)) & 0x3F, np.zeros((40, 40, 3), np.uint8))


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m9-n3-tweights", "augmix-m5-w4-d2", "v0",
                                  "original-mstd0.5", "3a", "trivialaugment"])
def test_auto_augment_strings_timm_knows(spec):
    check_auto_augment(spec)
    cfg = DataConfig(img_size=32, crop="rrc", auto_augment=spec, reprob=0.25)
    seed_view_rngs(0)
    out = train_transform(cfg, (0.5,) * 3, (0.25,) * 3)(Image.new("RGB", (40, 30), (90, 30, 200)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


@pytest.mark.parametrize("override, words", [
    ("data.auto_augment=rand-m9-xyz", "'xyz'"), ("data.auto_augment=rand-m9-txyz", "'txyz'"),
    ("data.auto_augment=v9", "v9"), ("data.auto_augment=augmix-q3", "augmix-q3"),
    ("data.aug_repeats=0", "data.aug_repeats=0 must be >= 1"), ("data.mixup_mode=row", "batch, pair, elem"),
    ("data.scale=[0.9,0.1]", "data.scale"), ("data.crop=rrc data.std=[0.5]", "data.mean")])
def test_bad_augmentation_keys_are_one_line(capsys, override, words):
    crop = [] if "crop" in override or "repeats" in override or "mode" in override else ["data.crop=rrc"]
    assert main(["config", PLAIN, *crop, *override.split()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    with pytest.raises(ConfigError):
        check_auto_augment("rand-m9-xyz")


@pytest.mark.parametrize("mode, extra", [("batch", {}), ("elem", {}), ("pair", {}), ("elem", {"cutmix_minmax": (0.2, 0.6)}),
                                         ("batch", {"switch_prob": 0.8, "cutmix_minmax": (0.3, 0.7)})])
def test_mixup_modes_match_timm(mode, extra):
    """Our tensor-op mixing gives what timm's own Mixup gives from the same numpy state, per mode."""
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, mode=mode, num_classes=10, **extra)
    aug = BatchAugment(Normalize((0.5,), (0.5,)), 0, False, 10, 0.1, Mixup(**kw))
    ref = Mixup(num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, mode=mode,
                switch_prob=extra.get("switch_prob", 0.5), cutmix_minmax=extra.get("cutmix_minmax"))
    images = torch.randint(0, 256, (8, 1, 12, 16), dtype=torch.uint8)
    labels, idx = torch.arange(8) % 10, torch.arange(8)
    kinds = set()
    for step in range(10):
        x, y = aug(images, labels, idx, seed=3, epoch=1, step=step)
        np.random.seed(step_seed(3, 1, step))
        ref_x, ref_y = ref(aug.views(images, idx, epoch_salt(3, 1)), labels)
        assert torch.allclose(x, ref_x, atol=1e-6) and torch.allclose(y, ref_y, atol=1e-6), (mode, step)
        params = aug.mix_params(3, 1, step, images.shape)
        kinds |= set(params.view(-1, 6)[:, 1].tolist())
        # the rrc path hands float views in: mixing alone, the same result
        xf, _ = aug.apply(aug.views(images, idx, epoch_salt(3, 1)), labels, idx, epoch_salt(3, 1), params)
        assert torch.equal(xf, x)
    assert kinds == {0.0, 1.0}  # both Mixup and CutMix were drawn


def test_corrupt_image_and_empty_class_folder_are_one_line(folder, tmp_path):
    import shutil

    root = tmp_path / "f"
    shutil.copytree(folder, root)
    bad = root / "train" / "c1" / "07.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    for crop in ("pad", "rrc"):
        cfg = DataConfig(name="imagefolder", root=str(root), img_size=32, crop=crop)
        split = load_split(cfg, train=True)
        views = split if crop == "pad" else TrainViews(split, train_transform(cfg, split.mean, split.std), 0)
        batches = LoaderBatches(views, ShardedBatches(48, 48, 0, 1, 0), "cpu", num_workers=2)
        with pytest.raises(DataError) as e:
            list(batches)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    (root / "train" / "c3").mkdir()
    with pytest.raises(DataError, match="c3 holds no images"):
        load_split(DataConfig(name="imagefolder", root=str(root)), train=True)
