"""`data.augment_on=device`: the workers crop, flip and draw; RandAugment, normalisation and
erasing run batch-wise on the device. The views are the workers path's draws (checked against timm's
path on the same seeds) and stay a pure function of (seed, epoch, view): the same in 1 or N processes,
with any number of workers."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PLAIN, ROOT
from distill.cli import main
from distill.config import DataConfig
from distill.recipe import load_config
from distill.data.augment import Normalize
from distill.data.device.views import DeviceAugment, DeviceTrainViews
from distill.data.loader import LoaderBatches, ShardedBatches
from distill.data.sources import load_split
from distill.data.transforms import TrainViews, train_transform
from distill.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 smooth 64x48 JPEGs (gradients and a bright box; a resize changes them little) in 3 classes."""
    root = tmp_path_factory.mktemp("smooth")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    for split, n in (("train", 24), ("val", 3)):
        for i in range(n):
            a, b, c = rng.uniform(0.5, 3, 3)
            img = np.stack([120 + 100 * np.sin(xx / (9 * a)), 120 + 100 * np.cos(yy / (7 * b)),
                            (xx + yy) * c % 255], -1)
            top, left = rng.integers(0, 30, 2)
            img[top:top + 14, left:left + 20] = 250
            path = root / split / f"c{i % 3}" / f"{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    return root


def device_loader(cfg, split, sampler, workers):
    views = DeviceTrainViews(split, cfg, seed=sampler.seed)
    normalize = Normalize(split.mean, split.std)
    return LoaderBatches(views, sampler, "cpu", workers, on_device=DeviceAugment(cfg, views.rand_augment, normalize))


def config(folder, **kw):
    return DataConfig(name="imagefolder", root=str(folder), img_size=32, crop="rrc", augment_on="device", **kw)


def test_crop_and_flip_are_timms_draws(folder):
    """Without RandAugment and erasing, each device view is timm's workers view of the same (seed,
    epoch, view) up to the resize (torchvision's tensor resize against PIL's): within 2.5 levels on
    average (measured 0.6-1.1); another seed's views differ by 20+."""
    cfg = config(folder, color_jitter=0.0)
    split = load_split(cfg, train=True)
    timm_views = TrainViews(split, train_transform(cfg, split.mean, split.std), seed=5)
    ours = DeviceTrainViews(split, cfg, seed=5)
    other = DeviceTrainViews(split, cfg, seed=6)
    aug = DeviceAugment(cfg, None, Normalize(split.mean, split.std))
    std = torch.tensor(split.std).view(3, 1, 1) * 255
    for view in range(24):
        ref = timm_views[(view, 2)][0] * std
        got = aug(*ours.collate([ours[(view, 2)]]))[0][0] * std
        wrong = aug(*other.collate([other[(view, 2)]]))[0][0] * std
        assert (got - ref).abs().mean() < 2.5, view
        assert (wrong - ref).abs().mean() > 10 * (got - ref).abs().mean(), view


def test_deits_augmentation_on_the_device_stays_close_to_timms(folder):
    """DeiT's RandAugment and erasing: the same ops and boxes as the workers path, so a device view stays
    close to timm's view outside the erased boxes (pixel noise differs there by design)."""
    cfg = config(folder, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5)
    split = load_split(cfg, train=True)
    timm_views = TrainViews(split, train_transform(cfg, split.mean, split.std), seed=3)
    ours = DeviceTrainViews(split, cfg, seed=3)
    aug = DeviceAugment(cfg, ours.rand_augment, Normalize(split.mean, split.std))
    std = torch.tensor(split.std).view(3, 1, 1) * 255
    diffs = []
    for view in range(24):
        item = ours[(view, 1)]
        boxes = item[3][13:].reshape(1, 4).long()  # after the 7 numbers of the crop and 2 RandAugment rows of 3
        got = aug(*ours.collate([item]))[0][0] * std
        ref = timm_views[(view, 1)][0] * std
        keep = torch.ones(32, 32, dtype=torch.bool)
        t, l, h, w = boxes[0].tolist()
        keep[t:t + h, l:l + w] = False
        diffs.append((got - ref).abs()[:, keep].mean().item())
    assert np.median(diffs) < 4.0, diffs


def test_device_views_are_the_same_in_one_and_two_processes_with_any_workers(folder):
    """Two ranks' batches (batch 4; 2 and 1 workers) concatenated = one rank's (batch 8, no worker), over two
    epochs, the second resumed mid-way."""
    cfg = config(folder, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5, aug_repeats=3)
    split = load_split(cfg, train=True)
    one = device_loader(cfg, split, ShardedBatches(24, 8, 0, 1, 11, repeats=3), 0)
    two = [device_loader(cfg, split, ShardedBatches(24, 4, r, 2, 11, repeats=3), 2 - r) for r in (0, 1)]
    n = 0
    for epoch, start in ((0, 0), (1, 1)):
        for b in (one, *two):
            b.sampler.set_epoch(epoch, start)
        for big, a, b in zip(one, *two):
            assert big[0].dtype == torch.float32 and big[0].shape == (8, 3, 32, 32)
            assert all(torch.equal(u, torch.cat([v, w])) for u, v, w in zip(big, a, b))
            n += 1
    assert n == 3 + 2


@pytest.mark.parametrize("override, words", [
    (["data.augment_on=device"], "set data.crop=rrc"),
    (["data.crop=rrc", "data.augment_on=device", "data.auto_augment=augmix-m5-w4-d2"], "rand-*"),
    (["data.crop=rrc", "data.augment_on=device", "data.color_jitter=0", "data.interpolation=random"], "not random"),
    (["data.crop=rrc", "data.augment_on=device"], "data.color_jitter=0"),
    (["data.augment_on=gpu"], "data.augment_on"),
])
def test_what_the_device_path_cannot_run_is_one_line(override, words):
    with pytest.raises(ConfigError, match=words.replace("*", r"\*").replace(".", r"\.")):
        load_config("recipes/fashion_mnist/plain_tiny.yaml", override)


def test_decoding_on_the_device_gives_the_same_views_as_in_the_workers(folder):
    """`data.decode_on=device` ships the JPEG's bytes and decodes the batch on the device (here the CPU,
    libjpeg-turbo as in the workers): the views are the workers-decoded ones, bit for bit."""
    cfg = config(folder, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5)
    split = load_split(cfg, train=True)
    normalize = Normalize(split.mean, split.std)
    batches = []
    for on_device in (False, True):
        views = DeviceTrainViews(split, cfg, seed=4, decode_on_device=on_device)
        loader = LoaderBatches(views, ShardedBatches(24, 8, 0, 1, 4), "cpu", 0,
                               on_device=DeviceAugment(cfg, views.rand_augment, normalize))
        loader.sampler.set_epoch(1)
        batches.append(list(loader))
        item = views[(0, 1)]
        h, w = item[3][2:4].long().tolist()
        assert item[3][0] == int(on_device)  # the file's bytes, or the crop's pixels
        assert item[0].numel() == (len(split.encoded(0)) if on_device else 3 * h * w)
    assert all(torch.equal(u, v) for a, b in zip(*batches) for u, v in zip(a, b))


@pytest.mark.parametrize("keep", [200, 0.5], ids=["header", "body"])
def test_a_damaged_jpeg_decoded_on_the_device_is_one_line_naming_it(folder, tmp_path, keep, capsys):
    """data.decode_on=device: the worker reads only a JPEG's header, the device decodes the rest. A file cut
    short in its header or its body ended in a RuntimeError traceback; now a DataError naming the file."""
    root = tmp_path / "f"
    shutil.copytree(folder, root)
    bad = root / "train" / "c1" / "07.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:keep if keep > 1 else int(len(data) * keep)])
    cfg = config(root)
    split = load_split(cfg, train=True)
    views = DeviceTrainViews(split, cfg, seed=0, decode_on_device=True)
    loader = LoaderBatches(views, ShardedBatches(24, 8, 0, 1, 0), "cpu", 0,
                           on_device=DeviceAugment(cfg, None, Normalize(split.mean, split.std), name=views.name))
    with pytest.raises(DataError) as e:
        list(loader)
    assert str(bad) in str(e.value) and "\n" not in str(e.value), e.value
    if keep == 0.5:  # and through `distill train`: exit 2, that line, no run folder left
        out = tmp_path / "runs"
        assert main(["train", str(ROOT / PLAIN), f"output_dir={out}", "data.name=imagefolder", f"data.root={root}",
                     "data.crop=rrc", "data.color_jitter=0", "data.augment_on=device", "data.decode_on=device",
                     "data.batch_size=8", "data.num_workers=0", "train.epochs=1", "train.mixed_precision=no"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(bad) in err, err
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_bench_data_times_each_part_and_names_the_bound(folder, capsys):
    """`distill bench --data`: a worker's rate, the device augmentation's, the whole pipeline's and the step's."""
    from distill.cli import main

    assert main(["bench", "recipes/fashion_mnist/plain_tiny.yaml", "data.name=imagefolder", f"data.root={folder}",
                 "data.crop=rrc", "data.augment_on=device", "data.auto_augment=rand-m9-mstd0.5-inc1", "data.reprob=0.25",
                 "data.batch_size=3", "data.cutmix_alpha=0", "data.num_workers=1", "train.mixed_precision=no", "--data",
                 "--steps", "2", "--warmup", "1"]) == 0
    table = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert table["augment_on"] == "device" and table["decode_on"] == "workers"  # auto: the device only on CUDA
    for key in ("worker_img_per_s", "device_aug_img_per_s", "data_img_per_s", "step_img_per_s"):
        assert float(table[key]) > 0, key
    assert table["bound_by"] in ("data", "step")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_a_gpu_decodes_and_augments_close_to_the_cpu(folder):
    """On CUDA the batch is decoded by nvJPEG and augmented there: close to the CPU's views (nvJPEG and
    libjpeg-turbo round differently), the same twice over. The tolerances are a guess: no GPU has run this yet."""
    cfg = config(folder, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5)
    split = load_split(cfg, train=True)
    out = {}
    for device in ("cpu", "cuda", "cuda"):
        views = DeviceTrainViews(split, cfg, seed=4, decode_on_device=True)
        loader = LoaderBatches(views, ShardedBatches(24, 8, 0, 1, 4), device, 1,
                               on_device=DeviceAugment(cfg, views.rand_augment, Normalize(split.mean, split.std).to(device)))
        loader.sampler.set_epoch(1)
        batches = [b[0].cpu() for b in loader]
        if device in out:
            assert all(torch.equal(a, b) for a, b in zip(out[device], batches))
        out[device] = batches
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(out["cpu"], out["cuda"])])
    assert diff.mean() < 0.05 and (diff > 0.5).float().mean() < 0.01, (diff.mean(), (diff > 0.5).float().mean())


def geometric_gaps(cfg, split, views=32):
    """Mean |device - workers| (grey levels) over each view whose RandAugment draws hold a geometric op
    (those fill the corners they uncover with the mean colour), and the channels of the views."""
    from distill.data.device.randaugment import DEVICE_OPS, GEOMETRIC_OPS
    geometric = {k for k, op in enumerate(DEVICE_OPS) if op in GEOMETRIC_OPS}
    workers = TrainViews(split, train_transform(cfg, split.mean, split.std), seed=4)
    ours = DeviceTrainViews(split, cfg, seed=4)
    aug = DeviceAugment(cfg, ours.rand_augment, Normalize(split.mean, split.std), split.in_chans)
    std = torch.tensor(split.std).view(-1, 1, 1) * 255
    gaps, channels = [], set()
    for view in range(views):
        item = ours[(view, 0)]
        ops = item[3][7:].reshape(-1, 3)[:, 0].long().tolist()  # the RandAugment rows after the 7 numbers
        got = aug(*ours.collate([item]))[0][0]
        channels.add(got.shape[0])
        if geometric & set(ops):
            gaps.append(((got - workers[(view, 0)][0]) * std).abs().mean().item())
    return gaps, channels


@pytest.mark.parametrize("mean", [[0.9, 0.1, 0.5], [0.29, 0.29, 0.29]], ids=["colour", "grey"])
def test_device_views_fill_with_the_sets_own_mean(folder, mean):
    """RandAugment's rotations, shears and translations fill what they uncover with the split's mean, on
    the device as in the workers: with data.mean far from ImageNet's, a geometric view stays within a few
    levels of timm's (ImageNet's fill put it 10+ levels away)."""
    cfg = config(folder, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.0, mean=mean, std=[0.25] * 3)
    gaps, _ = geometric_gaps(cfg, load_split(cfg, train=True))
    assert len(gaps) >= 5 and np.median(gaps) < 4.0, gaps


def test_a_one_channel_set_augments_on_the_device_as_in_the_workers():
    """Fashion-MNIST (1 channel, mean 0.29): the device views have one channel and stay close to the
    workers path's, geometric ops included (the fill was ImageNet's three values: a traceback)."""
    cfg = DataConfig(name="fashion_mnist", train_subset=64, img_size=32, crop="rrc", augment_on="device",
                     auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.0)
    split = load_split(cfg, train=True)
    assert split.in_chans == 1
    gaps, channels = geometric_gaps(cfg, split)
    assert channels == {1} and len(gaps) >= 5 and np.median(gaps) < 4.0, gaps


def test_bench_data_fits_its_steps_to_a_small_folder_and_names_the_batch(folder, capsys):
    """24 images at batch 3 are 8 steps an epoch: without --steps/--warmup the bench fits them to it (its
    defaults needed 160 steps an epoch); at batch 24 (one step) the line names data.batch_size."""
    from distill.cli import main

    args = ["bench", "recipes/fashion_mnist/plain_tiny.yaml", "data.name=imagefolder", f"data.root={folder}",
            "data.crop=rrc", "data.color_jitter=0", "data.cutmix_alpha=0", "data.num_workers=0",
            "train.mixed_precision=no"]
    assert main([*args, "data.batch_size=3", "--data"]) == 0
    assert float(dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())["data_img_per_s"]) > 0
    assert main([*args, "data.batch_size=24", "--data"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench --data needs at least") and "data.batch_size=24: lower data.batch_size" in err


def test_decoding_on_the_device_for_the_workers_path_is_refused(folder):
    """data.decode_on=device only acts with data.augment_on=device; with the workers path it was ignored
    (and `bench --data` reported `decode_on workers` without a word)."""
    with pytest.raises(ConfigError, match=r"data\.decode_on=device decodes JPEGs on the device for "
                                          r"data\.augment_on=device only"):
        load_config("recipes/fashion_mnist/plain_tiny.yaml", ["data.crop=rrc", "data.decode_on=device"])
