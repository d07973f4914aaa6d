"""The data path alone at 224 px, against timm's own loader, and a run's peak memory on an on-disk set.

    python scripts/bench_data.py --folder /tmp/fm224 --workers 1 2 --batches 30 --rounds 3
    python scripts/bench_data.py --folder /tmp/fm224 --memory 6000 60000

1. Writes Fashion-MNIST upscaled to 224 px RGB JPEGs into --folder (train 60,000, val 1,000) once.
2. Throughput: read + decode + augment + collate, images/s per worker, of distill's loader
   (`data.crop=rrc`: timm's transform, seeded per view) and of `timm.data.create_loader` with the
   same augmentation (RandomResizedCrop bicubic, flip, rand-m9-mstd0.5-inc1, random erasing 0.25)
   on the same folder, in alternating rounds so that a machine whose speed drifts slows both alike.
   timm's loader gets the same posterize guard (`distill.data.transforms.guard_posterize`): without it,
   Pillow 13 stops it about once every 500 images.
3. Memory: `distill bench` (a few training steps of a run) over the first N images of the folder,
   for each N given; the peak of the summed PSS of the process and its DataLoader workers, beside
   what the N images would take decoded in memory (uint8, 3 x 224 x 224).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

AUG = dict(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, interpolation="bicubic")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distill, whichever one the virtualenv installed


def _write_one(job):
    path, pixels, size = job
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = (size, size) if isinstance(size, int) else size
    image = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BICUBIC).convert("RGB"), dtype=np.int16)
    if not isinstance(size, int):  # ImageNet-like: noise gives the JPEG a photo's entropy (and decode cost)
        noise = np.random.default_rng(int.from_bytes(path.name.encode(), "little") % 2**32).normal(0, 12, image.shape)
        image = image + noise.astype(np.int16)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def write_folder(folder: Path, size=224, n_val: int = 1000, n_train: int = None, src_root: str = "data",
                 processes: int = 2) -> None:
    """Fashion-MNIST (Debian's files, or `src_root`) as JPEGs upscaled to `size` (an int: square; a
    (w, h) pair: that size with noise, ImageNet-like), the first `n_train` training images (all by
    default); skipped when already there."""
    from distill.config import DataConfig
    from distill.data.sources import load_split

    if (folder / "done").exists() or (folder / "prepare.json").exists():  # written, or a `distill prepare` copy
        return
    jobs = []
    for train, split in ((True, "train"), (False, "val")):
        src = load_split(DataConfig(name="fashion_mnist", root=src_root, img_size=28), train=train)
        n = (n_train or len(src)) if train else n_val
        jobs += [(folder / split / str(int(src.labels[i])) / f"{i:05d}.jpg", src.images[i, 0].numpy(), size)
                 for i in range(n)]
    with Pool(processes) as pool:
        pool.map(_write_one, jobs, chunksize=256)
    (folder / "done").write_text("ok\n")


def distill_loader(folder: Path, batch: int, workers: int, augment_on: str = "workers", decode_on: str = "workers"):
    """distill's training loader; under `augment_on=device` the workers' share only (uint8 views and
    their draws: what a worker hands over), the device's share is `distill bench --data`'s."""
    from distill.config import DataConfig
    from distill.data.device.views import DeviceTrainViews
    from distill.data.loader import LoaderBatches, ShardedBatches
    from distill.data.sources import load_split
    from distill.data.transforms import TrainViews, train_transform

    cfg = DataConfig(name="imagefolder", root=str(folder), img_size=224, crop="rrc", num_workers=workers,
                     augment_on=augment_on, **AUG)
    split = load_split(cfg, train=True)
    views = (DeviceTrainViews(split, cfg, seed=0, decode_on_device=decode_on == "device") if augment_on == "device"
             else TrainViews(split, train_transform(cfg, split.mean, split.std), seed=0))
    return LoaderBatches(views, ShardedBatches(len(split), batch, 0, 1, 0), "cpu", workers)


def timm_loader(folder: Path, batch: int, workers: int):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_dataset, create_loader

    from distill.data.transforms import guard_posterize

    dataset = create_dataset("", root=str(folder / "train"), split="train", is_training=True)
    loader = create_loader(dataset, (3, 224, 224), batch, is_training=True, use_prefetcher=False,
                           re_prob=AUG["reprob"], re_mode="pixel", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                           color_jitter=0.4, auto_augment=AUG["auto_augment"], interpolation=AUG["interpolation"],
                           mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_workers=workers,
                           persistent_workers=True)
    guard_posterize(loader.dataset.transform)  # before the workers start (they fork on first iteration)
    return loader


def images_per_s(loader, batches: int, warmup: int = 3) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)[1])  # labels: under augment_on=device the images are one flat buffer of crops
    return n / (time.perf_counter() - t0)


def throughput(folder: Path, workers, batches: int, rounds: int, batch: int = 64, augment_on: str = "workers",
               decode_on: str = "workers") -> list:
    rows = []
    ours = functools.partial(distill_loader, augment_on=augment_on, decode_on=decode_on)
    for w in workers:
        a, b = [], []
        for r in range(rounds):  # alternate the order: A B, B A, ...
            pair = [(a, ours), (b, timm_loader)] if r % 2 == 0 else [(b, timm_loader), (a, ours)]
            for out, make in pair:  # a fresh loader each time: no idle workers prefetching into the other's turn
                loader = make(folder, batch, w)
                out.append(images_per_s(loader, batches))
                del loader
                gc.collect()
        da, tb = sum(a) / len(a), sum(b) / len(b)
        rows.append(dict(workers=w, augment_on=augment_on, decode_on=decode_on, distill_img_s=round(da, 1), timm_img_s=round(tb, 1),
                         distill_per_worker=round(da / w, 1), timm_per_worker=round(tb / w, 1),
                         ratio=round(da / tb, 3), rounds=rounds, batches=batches, batch=batch))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def peak_memory(folder: Path, n: int, steps: int = 6) -> dict:
    """Peak summed PSS (MiB) of `distill bench` over the first n images (a ViT-Tiny-sized run at 224)."""
    import psutil

    cmd = [sys.executable, "-m", "distill", "bench", "recipes/fashion_mnist/plain_tiny.yaml",
           "data.name=imagefolder", f"data.root={folder}", "data.img_size=224", "student.patch_size=16",
           "data.crop=rrc", *[f"data.{k}={v}" for k, v in AUG.items()], "data.aug_repeats=3", "data.batch_size=32",
           "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0", f"data.train_subset={n}", "data.test_subset=256",
           "data.num_workers=2", f"--steps={steps}", "--warmup=2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top, parent = 0.0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            top = max(top, sum(p.memory_full_info().pss for p in tree) / 2**20)
        except psutil.Error:  # a worker ended between listing and reading
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"distill bench failed: {err[-2000:]}")
    decoded = n * 3 * 224 * 224 / 2**20
    row = dict(images=n, peak_pss_mib=round(top), decoded_uint8_mib=round(decoded), decoded_float32_mib=round(4 * decoded))
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/fm224", type=Path)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--batches", type=int, default=30, help="timed batches of 64 per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory", type=int, nargs="*", default=[], help="image counts for the peak-memory runs")
    p.add_argument("--imagenet-like", type=int, metavar="N", help="write N train images of 500x375 with noise "
                   "(JPEG quality 90, decode cost like ImageNet's) instead of 224 px squares")
    p.add_argument("--augment-on", choices=("workers", "device"), default="workers",
                   help="distill's data.augment_on (device: time the workers' share)")
    p.add_argument("--decode-on", choices=("workers", "device"), default="workers",
                   help="under --augment-on device: who decodes JPEGs (device: the workers ship file bytes, as for a GPU)")
    p.add_argument("--out", type=Path, help="write the JSON here")
    args = p.parse_args(argv)
    if args.imagenet_like:
        write_folder(args.folder, size=(500, 375), n_train=args.imagenet_like, n_val=100)
    else:
        write_folder(args.folder)
    result = {"cpu_capability": __import__("torch").backends.cpu.get_cpu_capability(),
              "throughput": throughput(args.folder, args.workers, args.batches, args.rounds,
                                       augment_on=args.augment_on, decode_on=args.decode_on) if args.workers else [],
              "memory": [peak_memory(args.folder, n) for n in args.memory]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
