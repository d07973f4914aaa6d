"""The checks of scripts/gpu_check.sh, one per subcommand, each printing one line (docs/gpu_check.md).

    python scripts/gpu_check.py jpegs DIR [--train 2048] [--val 64]  # noise JPEGs, 500x375, quality 90
    python scripts/gpu_check.py small DIR                          # 32 px noise PNGs for the training checks
    python scripts/gpu_check.py syncs SMALL_DIR OUT                # host syncs in 20 graphed steps
    python scripts/gpu_check.py resume SMALL_DIR OUT               # a graphed run resumed mid-way
    python scripts/gpu_check.py cmyk OUT                           # a CMYK JPEG, GPU against CPU decode
    python scripts/gpu_check.py bench JPEG_DIR device|workers      # distill bench --data
    python scripts/gpu_check.py deit JPEG_DIR                      # DeiT-Ti end to end against its ceiling

Exit status 0 when the check passes, 1 when it fails. Everything runs offline: the data are made here.
The `syncs`, `resume` and `cmyk` functions are also what tests/test_cuda.py asserts on.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PLAIN = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
DEIT = ROOT / "recipes/imagenet/deit_tiny.yaml"
CLASSES = 10
STOP_AT = 5  # the resumed run stops after this step of its first epoch (8 steps), mid-way


# ---- data, made here (no network) ------------------------------------------------------------------
def _write(job) -> None:
    path, seed, size, quality = job
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (1, 1, 3))  # a colour per image, under noise: ImageNet-like decode cost
    pixels = np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def make_folder(folder: Path, n_train: int, n_val: int, size=(500, 375), suffix=".jpg", quality=90) -> int:
    """An imagefolder (train/ and val/, CLASSES classes) of noise images; kept if already complete."""
    jobs = [(folder / split / f"c{i % CLASSES}" / f"{i:05d}{suffix}", i + 10**6 * (split == "val"), size, quality)
            for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    todo = [j for j in jobs if not j[0].exists()]
    with Pool(8) as pool:
        pool.map(_write, todo, chunksize=16)
    return len(jobs)


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG (as Photoshop writes them, and ImageNet holds a few): colour bars, 64 x 48."""
    from PIL import Image
    bars = np.zeros((48, 64, 3), np.uint8)
    for k, colour in enumerate([(230, 30, 30), (30, 200, 40), (20, 40, 220), (240, 220, 30)]):
        bars[:, 16 * k:16 * (k + 1)] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(bars).convert("CMYK").save(path, quality=95)
    return path


# ---- the checks --------------------------------------------------------------------------------------
def _small_config(folder, out, name, *extra):
    from distill.recipe import load_config
    return load_config(str(PLAIN), [
        "data.name=imagefolder", f"data.root={folder}", "data.in_memory=true", "data.img_size=32",
        "data.batch_size=32", "data.cutmix_alpha=0", "data.num_workers=0", "train.epochs=2", "train.warmup_epochs=0.5",
        "train.cuda_graphs=true", "student.drop_path_rate=0.1", "train.log_every=1000", f"output_dir={out}",
        f"name={name}", *extra])


def graphed_syncs(folder, out, steps: int = 20) -> dict:
    """Host syncs in `steps` graphed training steps after the capture, counted by
    `torch.cuda.set_sync_debug_mode("warn")`; returns {"syncs": n, "where": first warnings}."""
    import torch
    from distill.train.trainer import Loop
    loop = Loop(_small_config(folder, out, "syncs", "data.batch_size=8"))  # 32 steps an epoch
    r = loop.run
    r.student.train()
    r.data.train_batches.sampler.set_epoch(0, 0)
    r.teacher_logits.start_epoch(0, 0, loop.device)
    batches, sums = iter(r.data.train_batches), {}

    def step(k):
        images, labels, index = next(batches)
        for name, v in loop.train_step(images, labels, index, 0, k).items():  # as `Loop.train_epoch` sums them
            sums[name] = sums.get(name, 0.0) + v.detach().float()

    for k in range(2):  # the capture and one replay: their syncs are once per run
        step(k)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for k in range(2, 2 + steps):
                step(k)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return {"syncs": len(syncs), "where": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:5]}


class _StopAt:
    """Stands in for `StopRequest`: a stop agreed at micro-batch `at` of the first epoch; notes the lr then."""

    def __init__(self, trainer, at: int):
        self.trainer, self.at, self.calls, self.agreed, self.requested, self.lr = trainer, at, 0, False, None, None

    def poll(self, at_sync_point: bool) -> bool:
        self.calls += 1
        if self.calls == self.at:
            self.agreed, self.requested = True, "gpu_check"
            self.lr = float(self.trainer.run.optimizer.optimizer.param_groups[0]["lr"])
        return self.agreed


def resume_check(folder, out) -> dict:
    """An uninterrupted graphed run (2 epochs of 8 steps, drop-path 0.1) against the same run stopped after
    step STOP_AT and resumed: the lr's device and value around the load, and the final weights' max |diff|."""
    import torch
    from distill.runs.signals import Preempted
    from distill.train import trainer as tr
    ref = tr.Trainer(_small_config(folder, out, "uninterrupted"))
    ref.fit()
    cut = tr.Trainer(_small_config(folder, out, "resumed"))
    cut.stop = _StopAt(cut, STOP_AT)
    try:
        cut.fit()
    except Preempted:
        pass
    seen, real = {}, tr.make_capturable

    def watched(optimizer, device):
        lr = optimizer.param_groups[0]["lr"]
        seen["loaded_device"] = str(lr.device) if hasattr(lr, "device") else "a float"
        real(optimizer, device)
        lr = optimizer.param_groups[0]["lr"]
        seen.update(resumed_device=str(lr.device), resumed_lr=float(lr))

    tr.make_capturable = watched
    try:
        res = tr.Trainer(_small_config(folder, out, "resumed", "train.resume=auto"))
        res.fit()
    finally:
        tr.make_capturable = real
    a, b = ref.run.model.state_dict(), res.run.model.state_dict()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    final = [float(t.run.optimizer.optimizer.param_groups[0]["lr"]) for t in (ref, res)]
    return {**seen, "stopped_lr": cut.stop.lr, "final_lr": final, "weights_max_diff": diff,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def cmyk_decode(out) -> dict:
    """A CMYK JPEG decoded by nvJPEG (torchvision, device="cuda") and by libjpeg-turbo on the CPU:
    {"accepted": whether nvJPEG decoded it, "max_abs_diff": in levels, or None}."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    data = torch.frombuffer(bytearray(cmyk_jpeg(Path(out) / "cmyk.jpg").read_bytes()), dtype=torch.uint8)
    cpu = decode_jpeg(data, mode=ImageReadMode.RGB)
    try:
        gpu = decode_jpeg([data], mode=ImageReadMode.RGB, device="cuda")[0].cpu()
    except RuntimeError:
        return {"accepted": False, "max_abs_diff": None}
    return {"accepted": True, "max_abs_diff": int((gpu.int() - cpu.int()).abs().max())}


def _bench_table(args) -> dict:
    from distill.cli import main
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = main(args)
    if status != 0:
        raise SystemExit(f"distill {' '.join(args)} exited {status}")
    return dict(line.split(None, 1) for line in text.getvalue().splitlines() if len(line.split(None, 1)) == 2)


def bench_data(folder, augment_on: str, workers: int = 12) -> dict:
    """`distill bench --data` of the DeiT-Ti recipe on the noise JPEGs: each part's rate and the bound."""
    return _bench_table(["bench", str(DEIT), f"data.root={folder}", f"data.augment_on={augment_on}",
                         f"data.num_workers={workers}", "data.batch_size=128", "output_dir=/tmp/gpu_check_runs",
                         "--data", "--steps", "10", "--warmup", "2"])


def deit_vs_ceiling(folder, steps: int = 12, batch: int = 128, workers: int = 12) -> dict:
    """DeiT-Ti's whole step with its data path (`data.augment_on=device`, eager), images/s, against the same
    model, precision and AdamW on one batch already on the GPU (`CeilingLoop`), in this process."""
    import torch
    from distill.commands.bench import run_bench
    from distill.commands.bench_reference import CeilingLoop
    from distill.recipe import load_config
    cfg = load_config(str(DEIT), [f"data.root={folder}", f"data.num_workers={workers}", f"data.batch_size={batch}",
                                  "data.augment_on=device", "output_dir=/tmp/gpu_check_runs"])
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_bench(cfg, steps=steps, warmup=4)  # 16 steps: an epoch of 2,048 images
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(result.get("mixed_precision"))
    ceiling = CeilingLoop(cfg, torch.device("cuda"), amp)
    ceiling.timed(0, 4)
    ceiling_img_s = steps * batch / ceiling.timed(steps, 0)
    return {"end_to_end": result["train_img_per_s"], "ceiling": ceiling_img_s,
            "ratio": result["train_img_per_s"] / ceiling_img_s, "precision": result.get("mixed_precision")}


# ---- the command line --------------------------------------------------------------------------------
def _report(name: str, ok: bool, text: str) -> int:
    print(f"{'ok  ' if ok else 'FAIL'} {name:14s} {text}", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="check", required=True)
    for name, args in {"jpegs": ["folder"], "small": ["folder"], "syncs": ["folder", "out"],
                       "resume": ["folder", "out"], "cmyk": ["out"], "bench": ["folder", "augment_on"],
                       "deit": ["folder"]}.items():
        s = sub.add_parser(name)
        for a in args:
            s.add_argument(a)
        if name == "jpegs":
            s.add_argument("--train", type=int, default=2048)  # 16 steps of 128
            s.add_argument("--val", type=int, default=64)
    a = p.parse_args(argv)
    if a.check == "jpegs":
        n = make_folder(Path(a.folder), a.train, a.val)
        return _report("data", True, f"{n} noise JPEGs, 500x375, quality 90, in {a.folder}")
    if a.check == "small":
        n = make_folder(Path(a.folder), 256, 64, size=(32, 32), suffix=".png")
        return _report("data", True, f"{n} noise PNGs, 32x32, in {a.folder}")
    if a.check == "syncs":
        r = graphed_syncs(a.folder, a.out)
        return _report("graphed_syncs", r["syncs"] == 0, f"{r['syncs']} host syncs in 20 graphed steps "
                       f"(set_sync_debug_mode warn){': ' + ', '.join(r['where']) if r['where'] else ''}")
    if a.check == "resume":
        r = resume_check(a.folder, a.out)
        ok = (r["resumed_device"].startswith("cuda") and abs(r["resumed_lr"] - r["stopped_lr"]) <= 1e-9
              and r["weights_max_diff"] <= 1e-5)
        return _report("resume", ok, f"lr at the stop {r['stopped_lr']:.6g}; loaded on {r['loaded_device']}, "
                       f"resumed on {r['resumed_device']} at {r['resumed_lr']:.6g}; final lr {r['final_lr'][0]:.6g} / "
                       f"{r['final_lr'][1]:.6g} (uninterrupted / resumed); weights max|diff| {r['weights_max_diff']:.3g}")
    if a.check == "cmyk":
        r = cmyk_decode(a.out)
        if not r["accepted"]:
            return _report("cmyk_decode", True, "nvJPEG refuses the CMYK file (the CPU decodes it)")
        return _report("cmyk_decode", r["max_abs_diff"] <= 16, f"nvJPEG against libjpeg-turbo: max |diff| "
                       f"{r['max_abs_diff']} levels (over 16: wrong colours)")
    if a.check == "bench":
        t = bench_data(a.folder, a.augment_on)
        keys = ("worker_img_per_s", "device_aug_img_per_s", "data_img_per_s", "step_img_per_s", "bound_by")
        return _report(f"bench_{a.augment_on}", True, "  ".join(f"{k} {t[k]}" for k in keys if k in t))
    r = deit_vs_ceiling(a.folder)
    return _report("deit_e2e", True, f"{r['end_to_end']:.0f} img/s end to end, {r['ceiling']:.0f} img/s ceiling, "
                   f"{r['ratio']:.2f} of it ({r['precision']}, eager, augment_on=device, batch 128)")


if __name__ == "__main__":
    sys.exit(main())
