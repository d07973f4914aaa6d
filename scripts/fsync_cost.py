"""What the flushes of a durable checkpoint cost: `save_checkpoint` of the Tiny student (model,
AdamW state, scheduler, RNG, progress; 38 MB) timed with and without its fsyncs.

    python scripts/fsync_cost.py DIR [--saves 20]

The modes run in blocks of `--saves`, in the order A B B A, each block after a `sync` so that
neither inherits the other's unwritten pages; prints medians over both blocks of a mode.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distill, not an installed one

from distill.runs import checkpoint as ckpt  # noqa: E402
from distill.train.build import build_optimizer, build_scheduler  # noqa: E402
from distill.models import build_student
from distill.recipe import load_config  # noqa: E402


def build(run_dir: Path):
    cfg = load_config("recipes/fashion_mnist/plain_tiny.yaml", [])
    acc = Accelerator(project_dir=str(run_dir))
    model = build_student(cfg.student, 10, 1, cfg.data.img_size)
    opt = build_optimizer(model, cfg.train, 1e-3)
    sched = build_scheduler(opt, cfg.train, 128, 1)
    model, opt, sched = acc.prepare(model, opt, sched)
    model(torch.randn(2, 1, cfg.data.img_size, cfg.data.img_size)).sum().backward()
    opt.step()  # AdamW's moments exist, as in any real checkpoint
    acc.register_for_checkpointing(ckpt.Progress())
    return acc, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a folder on the filesystem to measure")
    parser.add_argument("--saves", type=int, default=20, help="saves per mode")
    args = parser.parse_args()
    real_fsync, in_fsync = os.fsync, []

    def timed_fsync(fd):  # the time a save is blocked in fsync itself
        t0 = time.perf_counter()
        real_fsync(fd)
        in_fsync[-1] += time.perf_counter() - t0

    with tempfile.TemporaryDirectory(dir=args.dir) as run_dir:
        acc, model = build(Path(run_dir))
        times = {"fsync": [], "no fsync": []}
        step = 0
        for mode in ["warm-up", "no fsync", "fsync", "fsync", "no fsync"]:
            os.fsync = timed_fsync if mode == "fsync" else (lambda fd: None)
            os.sync()
            for _ in range(2 if mode == "warm-up" else args.saves):
                in_fsync.append(0.0)
                t0 = time.perf_counter()
                ckpt.save_checkpoint(acc, Path(run_dir), step, keep=2, model=model)
                times.setdefault(mode, []).append(time.perf_counter() - t0)
                step += 1
        os.fsync = real_fsync
        del times["warm-up"]
    if os.environ.get("VERBOSE"):
        print({m: [round(x * 1e3) for x in t] for m, t in times.items()})
    # a shared disk stalls some saves for a second whatever the mode: the lower quartile shows
    # the cost when the disk is quiet, the median what a run sees on a busy one
    q = {m: statistics.quantiles(t, n=4) for m, t in times.items()}
    for mode, t in times.items():
        print(f"{mode:9s} p25 {q[mode][0] * 1e3:6.1f} ms  median {q[mode][1] * 1e3:6.1f} ms  min {min(t) * 1e3:6.1f}  "
              f"max {max(t) * 1e3:6.1f}  ({len(t)} saves)")
    cost = [(q["fsync"][i] - q["no fsync"][i]) * 1e3 for i in (0, 1)]
    print(f"cost of the fsyncs per checkpoint on {args.dir}: {cost[0]:.1f} ms at p25, {cost[1]:.1f} ms at the median")
    blocked = [t for t in in_fsync if t > 0]
    print(f"time inside fsync per checkpoint: median {statistics.median(blocked) * 1e3:.1f} ms, "
          f"p25 {statistics.quantiles(blocked, n=4)[0] * 1e3:.1f} ms, max {max(blocked) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
