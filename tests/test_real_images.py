"""Real images through the whole framework: Fashion-MNIST written out as a 64 px JPEG folder and as
an HF `save_to_disk` set of encoded images, trained with timm's per-sample transforms (`data.crop=rrc`):
learning, a kill and resume, a cached replay, and bad input."""
import io
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import ROOT, in_fp32, needs_fmnist, run_cli, run_main
from distill.runs.checkpoint import latest_checkpoint
from distill.cli import main
from distill.config import DataConfig
from distill.data.sources import load_split
from distill.models import create_model

pytestmark = needs_fmnist

PLAIN, HARD = "recipes/fashion_mnist/plain_tiny.yaml", "recipes/fashion_mnist/hard_tiny.yaml"
# DeiT's augmentation at small scale: RandomResizedCrop, RandAugment, random erasing, repeats, Mixup/CutMix
DEIT_AUG = ["data.img_size=32", "data.crop=rrc", "data.auto_augment=rand-m9-mstd0.5-inc1", "data.reprob=0.25",
            "data.aug_repeats=3", "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0", "data.num_workers=2"]
# a few steps of a narrow 4-token ViT: what is tested here is the sameness of views and weights, not learning
SMALL = [*DEIT_AUG, "student.patch_size=16", "student.embed_dim=128", "student.depth=2", "student.num_heads=2",
         "data.train_subset=480", "data.test_subset=100", "data.batch_size=16",
         "train.epochs=2", "train.warmup_epochs=0.2", "train.log_every=10"]


def write_fashion_mnist(root, n_train=3000, n_test=500, size=64):
    """Fashion-MNIST as RGB JPEGs at `size` px under root/{train,val}/<class>/, and the same encoded
    files as an HF DatasetDict under root/hf."""
    import datasets

    rows = {}
    for train, n, split in ((True, n_train, "train"), (False, n_test, "val")):
        src = load_split(DataConfig(name="fashion_mnist", img_size=28), train=train)
        keep = np.random.default_rng(0).permutation(len(src))[:n].tolist()
        rows[split] = {"image": [], "label": []}
        for i in keep:
            img = Image.fromarray(src.images[i, 0].numpy()).resize((size, size), Image.BILINEAR).convert("RGB")
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            path = root / "folder" / split / f"{int(src.labels[i]):d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            rows[split]["image"].append({"bytes": buf.getvalue(), "path": None})
            rows[split]["label"].append(int(src.labels[i]))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(c) for c in range(10)])})
    datasets.DatasetDict({("test" if k == "val" else k): datasets.Dataset.from_dict(v, features=feats)
                          for k, v in rows.items()}).save_to_disk(str(root / "hf"))
    return root


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm64"))


def source(fm, name):
    if name == "hf":
        return ["data.name=hf", f"data.root={fm / 'hf'}", "data.in_memory=false"]
    return ["data.name=imagefolder", f"data.root={fm / 'folder'}"]


def weights(run_dir):
    return load_file(str(run_dir / "student.safetensors"))


def test_hf_set_streams_from_arrow(fm):
    """Nothing decoded up front: an HFSplit over the Arrow table; the same pixels as the JPEG folder."""
    from distill.data.sources.hf import HFSplit

    cfg = DataConfig(name="hf", root=str(fm / "hf"), in_memory=False, img_size=64)
    split = load_split(cfg, train=False)
    folder = load_split(DataConfig(name="imagefolder", root=str(fm / "folder"), img_size=64), train=False)
    assert isinstance(split, HFSplit) and len(split) == 500 and split.in_chans == 3
    assert sorted(split.label(i) for i in range(500)) == sorted(folder.labels.tolist())
    assert 0.2 < split.mean[0] < 0.4 and split.mean[0] == split.mean[2]  # from a 1000-image sample of train
    image = np.asarray(split.pil(3))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert isinstance(load_split(DataConfig(name="hf", root=str(fm / "hf")), train=False).images, torch.Tensor)


@pytest.mark.slow
@pytest.mark.parametrize("name, augment_on", [("imagefolder", "workers"), ("hf", "workers")])
def test_deit_augmentation_learns_on_real_images(fm, tmp_path, name, augment_on):
    """RandomResizedCrop, RandAugment, random erasing, repeats x3, Mixup/CutMix: well above 10 % chance."""
    # DeiT's settings (RandAugment m9, Mixup 0.8 / CutMix 1.0, erasing 0.25, repeats 3), crops of a third
    # of the image or more; 279 steps of a narrow 64-token ViT (0.43M parameters) from scratch
    # (34.6 % with imagefolder, 33.6 % with hf)
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", "name=run", *source(fm, name), *DEIT_AUG,
                   f"data.augment_on={augment_on}",
                   "data.batch_size=32", "data.scale=[0.35,1]", "train.epochs=3", "train.lr=1e-3",
                   "student.embed_dim=128", "student.depth=2", "student.num_heads=2",
                   "train.lr_base_batch=32", "train.warmup_epochs=0.3", "train.log_every=20")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    print(f"{name}: top1 {summary['final_top1']:.1f} in {summary['wall_s']:.0f} s, {summary['params']} params")
    assert summary["final_top1"] > 25.0, summary  # 10 classes: chance is 10 %


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_rrc_run_killed_and_resumed_gives_identical_weights(fm, tmp_path, augment_on):
    args = ["train", PLAIN, *source(fm, "imagefolder"), *SMALL, "train.checkpoint_every_steps=10",
            f"data.augment_on={augment_on}", f"data.decode_on={'device' if augment_on == 'device' else 'auto'}"]
    ref = run_cli(*args, f"output_dir={tmp_path}", "name=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    cmd = [sys.executable, "-m", "distill", *in_fp32([*args, f"output_dir={tmp_path}", "name=cut"])]  # as run_cli runs
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = latest_checkpoint(tmp_path / "cut")
        if found is not None and int(found.name.split("_")[1]) >= 40:  # mid-epoch 2 (30 steps an epoch)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "cut" / "summary.json").exists()
    resumed = run_cli(*args, f"output_dir={tmp_path}", "name=cut", "train.resume=auto")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("topk", [None, 3], ids=["dense", "top3"])
def test_rrc_cached_replay_matches_live_with_a_teacher_at_another_resolution(fm, tmp_path, topk):
    """Hard distillation replays the argmax exactly from dense logits and from a top-3 cache alike."""
    torch.manual_seed(0)
    save_file(create_model("resnet10t", num_classes=10, in_chans=3).state_dict(), str(tmp_path / "student.safetensors"))
    args = ["train", HARD, f"output_dir={tmp_path}", *source(fm, "hf"), *SMALL, "train.epochs=1",
            "teacher.model=resnet10t", "teacher.small_input_stem=false", f"teacher.checkpoint={tmp_path}",
            "teacher.img_size=48", "distill.cache=true", "data.aug_seed=0", f"distill.cache_topk={topk or 0}"]
    live = run_main(*args, "name=live")  # in this process, as the replay it is compared with
    assert live.returncode == 0, live.stderr[-3000:]
    assert len(list((tmp_path / "logit_cache").rglob("epoch_0000_*.safetensors"))) == 1
    cached = run_main(*args, "name=cached")
    assert cached.returncode == 0, cached.stderr[-3000:]
    a, b = weights(tmp_path / "live"), weights(tmp_path / "cached")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: the replay saw the same views


def _bad_inputs(fm, d):
    """Each case: (overrides, words the one-line error must hold)."""
    import datasets

    corrupt = d / "corrupt"  # 2 images a class: one batch of 20 holds the bad file
    for split in ("train", "val"):
        for c in range(10):
            (corrupt / split / str(c)).mkdir(parents=True)
            for f in sorted((fm / "folder" / split / str(c)).iterdir())[:2]:
                shutil.copy(f, corrupt / split / str(c))
    bad = sorted((corrupt / "train" / "3").iterdir())[1]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (d / "empty" / "train").mkdir(parents=True)
    no_images = d / "no_images"
    shutil.copytree(fm / "folder", no_images)
    (no_images / "train" / "zz_empty").mkdir()
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b"x", "path": None}], "id": [0]},
                                    features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(d / "hf_nolabel"))
    folder = ["data.name=imagefolder", "data.train_subset=null", "data.test_subset=null"]
    return {
        "corrupt image": ([*folder, f"data.root={corrupt}"], str(bad)),
        "empty folder": ([*folder, f"data.root={d / 'empty'}"], "no images"),
        "class folder without images": ([*folder, f"data.root={no_images}"], "zz_empty holds no images"),
        "hf without a label column": (["data.name=hf", f"data.root={d / 'hf_nolabel'}"], "label column"),
    }


def test_bad_real_image_input_is_one_line(fm, tmp_path, capsys):
    cases = _bad_inputs(fm, tmp_path)
    capsys.readouterr()  # save_to_disk's progress bars
    for name, (overrides, words) in cases.items():
        argv = ["train", PLAIN, f"output_dir={tmp_path / 'runs'}", f"name={name.replace(' ', '_')}", *SMALL,
                *overrides, "data.batch_size=20", "train.epochs=1"]
        assert main(in_fp32(argv)) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and words in err, (name, err)
