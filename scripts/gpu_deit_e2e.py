"""DeiT-Ti at 224 px on one GPU: the whole training step with its data path against its compute ceiling.

    python scripts/gpu_deit_e2e.py FASHION_MNIST_DIR [--images 16384] [--workers 15] [--batch 256]

1. Writes Fashion-MNIST upscaled to 224 px RGB JPEGs (an ImageNet-shaped folder, 10 classes) once.
2. End to end: `distill bench` of recipes/imagenet/deit_tiny.yaml (RandomResizedCrop, rand-m9-mstd0.5-inc1,
   random erasing 0.25, 3 repeats, Mixup/CutMix; files decoded by DataLoader workers), bf16.
3. Ceiling: the same model, precision and fused AdamW on one batch already on the GPU
   (`distill.bench_reference.CeilingLoop`), timed in the same process.
Both eager and with `train.compile=true`. Prints one JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import sys
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write(job):
    from PIL import Image

    path, pixels = job
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((224, 224), Image.BICUBIC).convert("RGB").save(path, quality=90)


def write_folder(src_root: str, out: Path, n_train: int, n_val: int = 512) -> None:
    from distill.config import DataConfig
    from distill.datasets import load_split

    jobs = []
    for train, split, n in ((True, "train", n_train), (False, "val", n_val)):
        src = load_split(DataConfig(name="fashion_mnist", root=src_root, img_size=28), train=train)
        jobs += [(out / split / str(int(src.labels[i])) / f"{i:05d}.jpg", src.images[i, 0].numpy()) for i in range(n)]
    with Pool(16) as pool:
        pool.map(_write, jobs, chunksize=256)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("fmnist")
    p.add_argument("--folder", type=Path, default=Path("/tmp/fm224"))
    p.add_argument("--images", type=int, default=16384)
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    if not (args.folder / "train").is_dir():
        write_folder(args.fmnist, args.folder, args.images)
    import torch

    from distill.bench import run_bench
    from distill.bench_reference import CeilingLoop
    from distill.config import load_config

    for compile_ in (False, True):
        cfg = load_config("recipes/imagenet/deit_tiny.yaml", [
            f"data.root={args.folder}", f"data.num_workers={args.workers}", f"data.batch_size={args.batch}",
            "train.mixed_precision=bf16", f"train.compile={str(compile_).lower()}", "output_dir=/tmp/deit_runs"])
        result = run_bench(cfg, steps=args.steps, warmup=10)
        ceiling = CeilingLoop(cfg, torch.device("cuda"), torch.bfloat16)
        ceiling.timed(0, 10)
        ceiling_img_s = args.steps * args.batch / ceiling.timed(args.steps, 0)
        print(json.dumps({"compile": compile_, "workers": args.workers, "batch": args.batch,
                          "end_to_end_img_per_s": round(result["train_img_per_s"], 1),
                          "ceiling_img_per_s": round(ceiling_img_s, 1),
                          "vs_ceiling": round(result["train_img_per_s"] / ceiling_img_s, 3),
                          "gflops_forward": result["gflops_forward"], "device": result["device"]}), flush=True)


if __name__ == "__main__":
    main()
