"""`data.augment_on=device` must not stall a GPU: one batch's augmentation (decode, crops, resize,
RandAugment, normalisation, erasing) makes no call that waits for the device. Counted on the CPU
(tests/syncs.py); tests/test_cuda.py runs the same under `torch.cuda.set_sync_debug_mode` where a GPU is."""
import pytest
import torch
from PIL import Image

from conftest import noise_jpegs
from distill.config import DataConfig
from distill.data.augment import Normalize
from distill.data.device.randaugment import erase
from distill.data.device.views import DeviceAugment, DeviceTrainViews
from distill.data.sources import load_split
from syncs import counted_syncs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """16 noise JPEGs of 60x45 in 2 classes."""
    return noise_jpegs(tmp_path_factory.mktemp("noise"), {"train": 16, "val": 2}, (60, 45), 2, seed=1, quality=90)


@pytest.mark.parametrize("decode_on_device", [False, True], ids=["pixels", "jpeg"])
def test_one_device_augmented_batch_makes_no_host_sync(folder, decode_on_device, monkeypatch):
    """DeiT's augmentation (RandAugment m9, erasing 0.5 with up to 3 boxes) on a batch of 16, the views
    unchanged. At b7a7479 this batch made 92 such calls (pixels) and 108 (jpeg): the head's `tolist`
    (4), one `unique` per RandAugment layer (2) and one `nonzero` per op present and in the erasing
    (13), Python floats made into tensors on the device in the geometric ops (73), and with JPEGs each
    file sent back to the host (16)."""
    cfg = DataConfig(name="imagefolder", root=str(folder), img_size=32, crop="rrc", augment_on="device",
                     auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5, recount=3)
    split = load_split(cfg, train=True)
    views = DeviceTrainViews(split, cfg, seed=2, decode_on_device=decode_on_device)
    batch = views.collate([views[(v, 1)] for v in range(16)])
    augment = DeviceAugment(cfg, views.rand_augment, Normalize(split.mean, split.std), name=views.name)
    expected = augment(*batch)
    with counted_syncs(monkeypatch) as syncs:
        got = augment(*batch)
    assert sum(syncs.values()) == 0, dict(syncs)  # the fill colour went to the device with the first batch
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_erasing_with_overlapping_boxes_counts_its_pixels_on_the_host():
    """The erased pixels are located without `nonzero` (their number comes from the boxes, on the host):
    overlapping and empty boxes give the same picture as a mask built box by box."""
    images = torch.zeros(3, 2, 10, 12)
    boxes = torch.tensor([[[1, 2, 4, 5], [3, 4, 4, 5], [0, 0, 0, 0]],  # two overlapping boxes
                          [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # none
                          [[0, 0, 10, 1], [9, 0, 1, 12], [2, 2, 3, 3]]])  # edges
    out = erase(images, boxes, torch.tensor([5, 6, 7]), "pixel")
    mask = torch.zeros(3, 10, 12, dtype=torch.bool)
    for b in range(3):
        for t, l, h, w in boxes[b].tolist():
            mask[b, t:t + h, l:l + w] = True
    assert torch.equal((out != 0).any(1), mask)


def test_evaluation_waits_for_the_device_once_not_per_batch(monkeypatch):
    """Top-1/top-5 counters summed on the device, read once at the end (one `tolist`)."""
    from distill.train.evaluate import evaluate
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    batches = [(torch.randn(5, 3, 2, 2), torch.randint(0, 7, (5,)), None) for _ in range(6)]
    with counted_syncs(monkeypatch) as syncs:
        result = evaluate(model, batches, lambda x: x)
    assert dict(syncs) == {"Tensor.tolist": 1}, dict(syncs)
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y, _ in batches)
    assert result["eval_samples"] == 30 and abs(result["top1"] - 100 * hits / 30) < 1e-9


def test_the_logit_record_of_an_epoch_lives_in_host_memory():
    """A dense ImageNet epoch of logits is ~2.6 GB in bf16: the record is made on the host whatever
    the logits' device (meta here, standing in for a GPU), in their dtype."""
    from distill.train.cache import record_buffer
    buf = record_buffer(torch.empty(4, 10, dtype=torch.bfloat16, device="meta"), steps=6)
    assert buf.device.type == "cpu" and buf.shape == (6, 4, 10) and buf.dtype == torch.bfloat16


def test_a_cmyk_jpeg_is_decoded_by_the_worker_not_handed_to_the_device(tmp_path):
    """nvJPEG may take a CMYK file and return wrong colours: with data.decode_on=device such a file still
    ships as pixels decoded by libjpeg-turbo, as the workers path decodes it; an RGB JPEG ships as bytes."""
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_check import cmyk_jpeg
    cmyk_jpeg(tmp_path / "train" / "c0" / "a.jpg")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "train" / "c0" / "b.jpg")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), img_size=32, crop="rrc", augment_on="device",
                     decode_on="device")
    (tmp_path / "val" / "c0").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "val" / "c0" / "v.jpg")
    split = load_split(cfg, train=True)
    views = DeviceTrainViews(split, cfg, seed=0, decode_on_device=True)
    kinds = {split.name(i).rsplit("/", 1)[1]: int(views[(i, 0)][3][0]) for i in range(2)}
    assert kinds == {"a.jpg": 0, "b.jpg": 1}  # PIXELS, JPEG
