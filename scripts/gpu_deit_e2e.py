"""DeiT-Ti at 224 px on one GPU: the whole training step with its data path against its compute ceiling.

    python scripts/gpu_deit_e2e.py FASHION_MNIST_DIR [--images 16384] [--workers 15] [--batch 256]
        [--augment-on workers device] [--imagenet-like]

1. Writes Fashion-MNIST upscaled to 224 px RGB JPEGs (an ImageNet-shaped folder, 10 classes) once; with
   --imagenet-like, 500x375 JPEGs with noise at quality 90 (ImageNet's decode cost) instead.
2. End to end: `distill bench` of recipes/imagenet/deit_tiny.yaml (RandomResizedCrop, rand-m9-mstd0.5-inc1,
   random erasing 0.25, 3 repeats, Mixup/CutMix), bf16, for each `data.augment_on` given: `workers`
   (timm's transforms per sample in DataLoader workers) and `device` (workers read and draw; nvJPEG
   decodes, and crop, RandAugment, normalisation and erasing run on the GPU batch-wise).
3. Ceiling: the same model, precision and fused AdamW on one batch already on the GPU
   (`distill.commands.bench_reference.CeilingLoop`), timed in the same process.
Eager and with `train.compile=true`. Prints one JSON line per setting; the issue-24 goal is
`vs_ceiling` >= 0.8 with `device` and 16 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/imagenet/deit_tiny.yaml"  # the repo's, from any working directory
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_data import write_folder  # noqa: E402  (the same JPEG folder as the CPU data bench)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("fmnist")
    p.add_argument("--folder", type=Path, default=Path("/tmp/fm224"))
    p.add_argument("--images", type=int, default=16384)
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--augment-on", nargs="+", default=["workers", "device"], choices=("workers", "device"))
    p.add_argument("--imagenet-like", action="store_true", help="500x375 JPEGs with noise, quality 90")
    args = p.parse_args()
    if args.imagenet_like and args.folder == Path("/tmp/fm224"):
        args.folder = Path("/tmp/in500")
    size = (500, 375) if args.imagenet_like else 224
    write_folder(args.folder, size=size, n_val=512, n_train=args.images, src_root=args.fmnist, processes=16)
    import torch

    from distill.commands.bench import run_bench
    from distill.commands.bench_reference import CeilingLoop
    from distill.recipe import load_config

    for augment_on, compile_ in [(a, c) for a in args.augment_on for c in (False, True)]:
        cfg = load_config(str(RECIPE), [
            f"data.root={args.folder}", f"data.num_workers={args.workers}", f"data.batch_size={args.batch}",
            f"data.augment_on={augment_on}", "train.mixed_precision=bf16", f"train.compile={str(compile_).lower()}",
            "output_dir=/tmp/deit_runs"])
        result = run_bench(cfg, steps=args.steps, warmup=10)
        ceiling = CeilingLoop(cfg, torch.device("cuda"), torch.bfloat16)
        ceiling.timed(0, 10)
        ceiling_img_s = args.steps * args.batch / ceiling.timed(args.steps, 0)
        print(json.dumps({"augment_on": augment_on, "compile": compile_, "workers": args.workers, "batch": args.batch,
                          "end_to_end_img_per_s": round(result["train_img_per_s"], 1),
                          "ceiling_img_per_s": round(ceiling_img_s, 1),
                          "vs_ceiling": round(result["train_img_per_s"] / ceiling_img_s, 3),
                          "gflops_forward": result["gflops_forward"], "device": result["device"]}), flush=True)


if __name__ == "__main__":
    main()
