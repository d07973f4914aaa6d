"""Dataset loaders on tiny files written in the real on-disk formats, plus the real Fashion-MNIST."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from timm.data import Mixup
from PIL import Image

from conftest import needs_fmnist
from distill.config import DataConfig
from distill.data import splits as D
from distill.data.augment import BatchAugment, Normalize
from distill.data.loader import DeviceBatches, LoaderBatches, ShardedBatches
from distill.data.sources import fashion_mnist, load_split
from distill.data.sources.imagefolder import FolderSplit
from distill.data.splits import ImageSplit
from distill.errors import DataError


def write_idx(path, array):
    """An IDX file as the originals: magic 0x0000 08 ndim, big-endian int32 dims, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_fmnist(folder, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros: padding is visible
        labels = np.arange(n, dtype=np.uint8) % 10
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Hide the machine's real Fashion-MNIST so lookups only see tmp_path."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def test_fashion_mnist_idx_round_trip_and_padding(tmp_path, no_debian):
    raw = make_fmnist(tmp_path)
    split = load_split(DataConfig(name="fashion_mnist", root=str(tmp_path)), train=True)
    assert isinstance(split, ImageSplit)
    assert split.images.shape == (12, 1, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == raw["train"][1].tolist()
    assert torch.equal(split.images[:, 0, 2:30, 2:30], torch.from_numpy(raw["train"][0]))
    border = split.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0  # 28 -> 32 pads 2 zero pixels on every side
    assert split.num_classes == 10 and split.in_chans == 1 and len(split) == 12
    assert split.classes[0] == "T-shirt/top" and split.mean == (0.2860,) and split.std == (0.3530,)
    test = load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), img_size=28), train=False)
    assert torch.equal(test.images[:, 0], torch.from_numpy(raw["t10k"][0]))  # 28 -> 28: unchanged


def test_fashion_mnist_torchvision_layout_ungzipped(tmp_path, no_debian):
    raw = make_fmnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    split = load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), img_size=28), train=False)
    assert torch.equal(split.images[:, 0], torch.from_numpy(raw["t10k"][0]))


def test_fashion_mnist_missing_names_places(tmp_path, no_debian):
    with pytest.raises(DataError) as e:
        load_split(DataConfig(name="fashion_mnist", root=str(tmp_path / "data")), train=True)
    msg = str(e.value)
    assert str(tmp_path / "data") in msg and str(tmp_path / "data" / "FashionMNIST" / "raw") in msg
    assert str(tmp_path / "no-debian") in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_fashion_mnist_corrupt_idx(tmp_path, no_debian):
    make_fmnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 20))  # wrong dtype code
    with pytest.raises(DataError, match="bad magic") as e:
        load_split(DataConfig(name="fashion_mnist", root=str(tmp_path)), train=True)
    assert str(bad) in str(e.value)
    truncated = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(truncated.read_bytes())
    truncated.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataError, match="truncated") as e:
        load_split(DataConfig(name="fashion_mnist", root=str(tmp_path)), train=False)
    assert str(truncated) in str(e.value)


def test_subsets_are_deterministic_and_bounded(tmp_path, no_debian):
    raw = make_fmnist(tmp_path)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), train_subset=5, img_size=28)
    a, b = load_split(cfg, train=True), load_split(cfg, train=True)
    assert len(a) == 5 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    keep = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].sort().values
    assert torch.equal(a.images[:, 0], torch.from_numpy(raw["train"][0])[keep])
    assert len(load_split(cfg, train=False)) == 5  # test_subset is separate: whole test split
    with pytest.raises(DataError, match=r"data.test_subset=6 .* 5 images"):
        load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), test_subset=6), train=False)


def test_fit_resizes_larger_images():
    img = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    img[..., :, 32:] = 200  # left half 0, right half 200
    out = D.fit_images(img, 32)
    assert out.shape == (1, 1, 32, 32) and out.dtype == torch.uint8
    assert out[0, 0, :, :15].max() == 0 and out[0, 0, :, 17:].min() == 200
    assert 0 < out[0, 0, 0, 15] < 200 or 0 < out[0, 0, 0, 16] < 200  # antialiased edge
    wide = D.fit_images(torch.full((2, 3, 40, 80), 7, dtype=torch.uint8), 32)
    assert wide.shape == (2, 3, 32, 32) and (wide == 7).all()  # shorter side resized, centre-cropped


def _cifar_batch(n, label_key, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: list(rng.integers(0, 10, n)), b"filenames": [b"f.png"] * n}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(3, b"labels", i) for i in range(6)]
    for i in range(5):
        _dump(folder / f"data_batch_{i + 1}", batches[i])
    _dump(folder / "test_batch", batches[5])
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.labels.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    # row layout: 1024 red, then green, then blue values, each a row-major 32x32 plane
    c, y, x = 1, 5, 7
    assert test.images[2, c, y, x] == batches[5][b"data"][2, c * 1024 + y * 32 + x]
    assert train.images[4, 2, 31, 0] == batches[1][b"data"][1, 2 * 1024 + 31 * 32]
    assert train.classes[1] == "automobile" and train.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_pickles_and_corrupt_batch(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = _cifar_batch(4, b"fine_labels", 0)
    train[b"coarse_labels"] = [0] * 4
    _dump(folder / "train", train)
    _dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                            b"coarse_label_names": [b"x"] * 20})
    split = load_split(DataConfig(name="cifar100", root=str(tmp_path), download=False), train=True)
    assert split.num_classes == 100 and split.classes[42] == "c42"
    assert split.labels.tolist() == [int(v) for v in train[b"fine_labels"]]
    assert split.images[3, 0, 0, 1] == train[b"data"][3, 1]
    (folder / "test").write_bytes(pickle.dumps(train)[:50])  # truncated pickle
    with pytest.raises(DataError, match="not a readable CIFAR pickle") as e:
        load_split(DataConfig(name="cifar100", root=str(tmp_path), download=False), train=False)
    assert str(folder / "test") in str(e.value)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true") as e:
        load_split(DataConfig(name="cifar10", root=str(tmp_path), download=False), train=True)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


def test_cifar_download_failure_is_data_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="download into .* failed .*Name or service not known"):
        load_split(DataConfig(name="cifar100", root=str(tmp_path), download=True), train=True)


def test_hf_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "emu"])})

    def make(n):
        arrays = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(n)]
        return arrays, datasets.Dataset.from_dict(
            {"img": [Image.fromarray(a) for a in arrays], "label": [i % 3 for i in range(n)]}, features=feats)

    train_px, train_ds = make(6)
    test_px, test_ds = make(4)
    datasets.DatasetDict({"train": train_ds, "test": test_ds}).save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(name="hf", root=str(tmp_path / "hf"))
    test = load_split(cfg, train=False)
    assert test.images.shape == (4, 3, 32, 32) and test.classes == ["cat", "dog", "emu"]
    assert torch.equal(test.images[1, :, 2:30, 2:30], torch.from_numpy(test_px[1]).permute(2, 0, 1))
    assert test.labels.tolist() == [0, 1, 2, 0]
    all_train = np.stack(train_px).astype(np.float64) / 255  # mean/std come from the train split
    assert np.allclose(test.mean, all_train.mean((0, 1, 2)), atol=1e-6)
    assert np.allclose(test.std, all_train.std((0, 1, 2)), atol=1e-6)
    sub = load_split(DataConfig(name="hf", root=str(tmp_path / "hf"), train_subset=2), train=True)
    assert len(sub) == 2 and sub.mean == test.mean


def test_hf_grayscale_and_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8), mode="L") for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": imgs, "labels": [0, 1, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "labels": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "hf"))
    split = load_split(DataConfig(name="hf", root=str(tmp_path / "hf"), img_size=8), train=False)
    assert split.in_chans == 1 and split.classes == ["0", "1"] and split.images[2].unique().tolist() == [20]


def test_hf_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_split(DataConfig(name="hf", root=str(tmp_path / "none")), train=True)


def _png(path, color, size=(40, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder(tmp_path):
    for split in ("train", "val"):
        for i in range(3):
            _png(tmp_path / split / "b_red" / f"{i}.png", (255, 0, 0))
            _png(tmp_path / split / "a_blue" / f"{i}.PNG", (0, 0, 255))
    (tmp_path / "train" / "a_blue" / "notes.txt").write_text("not an image")
    train = load_split(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), train=True)
    assert isinstance(train, FolderSplit) and len(train) == 6
    assert train.classes == ["a_blue", "b_red"] and train.num_classes == 2 and train.in_chans == 3
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    image, label, index = train[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and (label, index) == (1, 4)
    assert image[0].min() == 255 and image[2].max() == 0
    sub = load_split(DataConfig(name="imagefolder", root=str(tmp_path), test_subset=2), train=False)
    keep = torch.randperm(6, generator=torch.Generator().manual_seed(0))[:2].sort().values
    assert len(sub) == 2 and sub.labels.tolist() == train.labels[keep].tolist()
    _png(tmp_path / "val" / "c_green" / "0.png", (0, 255, 0))
    with pytest.raises(DataError, match="c_green"):
        load_split(DataConfig(name="imagefolder", root=str(tmp_path)), train=False)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DataError, match="train not found"):
        load_split(DataConfig(name="imagefolder", root=str(tmp_path)), train=True)


@needs_fmnist
def test_real_fashion_mnist():
    train = load_split(DataConfig(name="fashion_mnist", root="/nonexistent"), train=True)
    test = load_split(DataConfig(name="fashion_mnist", root="/nonexistent", img_size=28), train=False)
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert 0.27 < test.images.float().mean().item() / 255 < 0.30  # near the published 0.2860


def test_device_and_dataloader_paths_augment_alike(tmp_path):
    """The in-memory path (a uint8 tensor indexed on the device) and the DataLoader path (workers
    decoding files) yield the same batches, so the same crops, flips and CutMix, step by step."""
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = tmp_path / "train" / f"class{i % 3}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    files = load_split(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), train=True)
    in_memory = ImageSplit(torch.stack([files[i][0] for i in range(len(files))]), files.labels,
                           files.classes, files.mean, files.std)
    aug = BatchAugment(Normalize(files.mean, files.std), 2, True, 3, 0.1, Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=3))
    # two processes' worth of sharding, seen from rank 1, over two epochs, the second resumed mid-way
    sampler = lambda: ShardedBatches(len(files), 4, rank=1, world_size=2, seed=7)  # noqa: E731
    device_path = DeviceBatches(in_memory, sampler(), "cpu")
    loader_path = LoaderBatches(files, sampler(), "cpu", num_workers=2)
    n = 0
    for epoch, start in ((0, 0), (1, 2)):
        for batches in (device_path, loader_path):
            batches.sampler.set_epoch(epoch, start)
        for step, (a, b) in enumerate(zip(device_path, loader_path), start):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
            xa, ya = aug(*a, seed=7, epoch=epoch, step=step)
            xb, yb = aug(*b, seed=7, epoch=epoch, step=step)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            n += 1
    assert n == 2 * len(files) // 8 - 2
    evaluated = [torch.cat(t) for t in zip(*DeviceBatches(in_memory, None, "cpu", 6).iter_range(range(3, 40)))]
    loaded = [torch.cat(t) for t in zip(*LoaderBatches(files, None, "cpu", 2, 6).iter_range(range(3, 40)))]
    assert all(torch.equal(u, v) for u, v in zip(evaluated[:2], loaded[:2]))  # images, labels (eval is unaugmented)


@needs_fmnist
def test_a_source_carries_its_facts_and_they_are_the_datas():
    """The registered entry's classes, channels, train size and statistics (what a dry run and an export
    read without loading the data) agree with the data itself."""
    from distill.data.sources import SOURCES

    source = SOURCES["fashion_mnist"]
    train = load_split(DataConfig(name="fashion_mnist"), train=True)
    assert source.shape == (len(train), train.num_classes, train.in_chans) == (60000, 10, 1)
    pixels = train.images[:10000, :, 2:30, 2:30].float() / 255  # the 28x28 images, without the padding to 32
    assert abs(pixels.mean().item() - source.mean[0]) < 0.01 and abs(pixels.std().item() - source.std[0]) < 0.01
    assert SOURCES["hf"].shape is None and SOURCES["imagefolder"].copy_of is not None  # the data knows these
