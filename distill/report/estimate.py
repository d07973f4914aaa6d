"""`distill study FILE --dry-run`: every run's compute and an estimate of its hours, before any runs.

Per run: the student's training FLOPs (forward and backward per image, `torch.utils.flop_counter`,
times the images its epochs hold) and the teacher's forward FLOPs (live: every view; with the logit
cache, the views are recorded once per study and replayed, so the recording is counted once). Hours
on this device come from timing the student's forward and backward on random images (4 steps after
one warm-up, at the recipe's precision and batch, fewer images where a step would cost over
0.2 TFLOP): the data path, evaluation and start-up are not timed (`--calibrate` times them:
distill/report/calibrate.py). Hours
on a GPU named by the study (`scaling.gpu`, a folder of `docs/bench/`) divide the FLOPs by the
training TFLOP/s measured there, interpolated in log-log between the measured models' forward GFLOPs.
"""
from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Collection, List, NamedTuple, Optional

import torch
from omegaconf import OmegaConf

from distill.config import DataConfig
from distill.recipe import load_config
from distill.data.sources import SOURCES, load_split
from distill.errors import DataError
from distill.models import build_student, create_model
from distill.models.cost import count_params, forward_gflops, storage_free, train_gflops
from distill.precision import resolve
from distill.runs.checkpoint import checkpoint_step

ROOT = Path(__file__).resolve().parents[2]
STEP_FLOPS = 2e11  # the timed steps' batch: the recipe's, or fewer images where a step would cost more




@lru_cache(maxsize=None)
def split_shape(data_yaml: str, train_images: Optional[int]):
    """(train images, classes, channels) of a data config: a built-in set's, else read from the data,
    else `train_images` (scaling.train_images) with ImageNet's classes and channels."""
    data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.create(data_yaml)))
    known = SOURCES[data.name].shape if data.name in SOURCES else None  # a dry run reads no data where it can
    if known:
        n, classes, chans = known
        return data.train_subset or n, classes, chans
    try:
        test = load_split(data, train=False)
        return data.train_subset or len(load_split(data, train=True)), test.num_classes, test.in_chans
    except DataError:
        if train_images is None:
            raise
        return data.train_subset or train_images, 1000, 3


class SizeShape(NamedTuple):
    image_flops: float  # the student's training FLOPs per image
    epoch_images: int  # images an epoch trains (whole global batches)
    steps: int  # micro-steps an epoch
    params: int


def size_shape(cfg, sc) -> SizeShape:
    """What one run's config trains, per image and per epoch, without reading the data where its source
    is built in (`split_shape`): the ladder's budgets and the held-out prediction both read it here."""
    n, classes, chans = split_shape(OmegaConf.to_yaml(OmegaConf.structured(cfg.data)), sc.train_images)
    per_step = cfg.data.batch_size * sc.processes
    model = storage_free(lambda: build_student(cfg.student, classes, chans, cfg.data.img_size))
    image_flops = train_gflops(model, (chans, cfg.data.img_size, cfg.data.img_size)) * 1e9
    return SizeShape(image_flops, (n // per_step) * per_step, n // per_step, count_params(model))


def _seconds_per_image(model: torch.nn.Module, shape, precision: str, batch: int) -> float:
    """Forward and backward of `model` on random images, timed after one warm-up step."""
    x = torch.randn(batch, *shape)
    amp = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    steps = 4
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with amp:
            out = model(x)
        sum(o.float().sum() for o in (out if isinstance(out, (tuple, list)) else (out,))).backward()
    return (time.perf_counter() - t0) / (steps * batch)


def gpu_rate(gpu: str):
    """Training TFLOP/s measured on `gpu` (docs/bench/<gpu>/*.json) as a function of a model's forward
    GFLOPs: the best measurement at each size (graphed, compiled or eager), interpolated linearly in
    log-log between sizes and held constant beyond them; None without measurements."""
    best = {}
    for f in sorted((ROOT / "docs" / "bench" / gpu).glob("*.json")):
        d = json.loads(f.read_text())
        if d.get("train_tflops") and d.get("gflops_forward"):
            key = round(math.log(d["gflops_forward"]), 1)
            if d["train_tflops"] > best.get(key, (0, ""))[0]:
                best[key] = (d["train_tflops"], f.name)
    if not best:
        return None
    xs = sorted(best)

    def rate(gflops: float):
        x = min(max(math.log(gflops), xs[0]), xs[-1])
        hi = next(i for i, v in enumerate(xs) if v >= x)
        lo = max(hi - 1, 0)
        w = 0.0 if xs[hi] == xs[lo] else (x - xs[lo]) / (xs[hi] - xs[lo])
        tflops = math.exp((1 - w) * math.log(best[xs[lo]][0]) + w * math.log(best[xs[hi]][0]))
        return tflops, "+".join(sorted({best[xs[lo]][1], best[xs[hi]][1]}))

    return rate


def estimate(jobs, study) -> List[dict]:
    """One dict per job: params, images, student and teacher FLOPs, seconds here (and on the GPU)."""
    sc = study.scaling
    rate = gpu_rate(sc.gpu) if sc is not None and sc.gpu else None
    measured, recorded, out = {}, set(), []
    for job in jobs:
        resume = [s for s in job.settings if s.startswith("train.resume=")]  # a fork's checkpoint is not made yet
        cfg = load_config(job.recipe, [s for s in job.settings if s not in resume])
        n, classes, chans = split_shape(_data_yaml(cfg), sc.train_images if sc else None)
        processes = sc.processes if sc is not None else 1
        per_step = cfg.data.batch_size * processes
        images = cfg.train.epochs * (n // per_step) * per_step
        start = checkpoint_step(resume[-1].split("=", 1)[1] if resume else "") * per_step  # a fork's images before its checkpoint (micro-steps)
        shape = (chans, cfg.data.img_size, cfg.data.img_size)
        key = (json.dumps(vars(cfg.student), default=str), shape, classes, cfg.train.mixed_precision, cfg.data.batch_size)
        if key not in measured:  # one model per rung: seeds, budgets and methods share it
            measured[key] = _measure(cfg, classes, shape)
        params, gflops, forward, seconds = measured[key]
        teacher = 0.0
        if cfg.distill.type != "none" and cfg.teacher.model:
            epochs = set(range(start // (n // per_step * per_step), cfg.train.epochs))  # a fork's own epochs
            if cfg.distill.cache:  # recorded once per view (its key approximated by teacher and aug_seed): new epochs only
                cache = (cfg.teacher.checkpoint or cfg.teacher.model, cfg.data.aug_seed)
                epochs -= {e for c, e in recorded if c == cache}
                recorded |= {(cache, e) for e in epochs}
            views = len(epochs) * (images // cfg.train.epochs)
            teacher = _teacher_gflops(cfg, classes, chans) * 1e9 * views
        row = {"run": job.run_dir.name, "params": params, "images": images - start, "images_scratch": images,
               "flops": gflops * 1e9 * (images - start), "teacher_flops": teacher,
               "hours_here": seconds * (images - start) / 3600}
        if rate is not None:
            tflops, source = rate(forward)
            row.update(hours_gpu=(row["flops"] + row["teacher_flops"]) / (tflops * 1e12) / 3600, gpu_source=source)
        out.append(row)
    return out


def _measure(cfg, classes: int, shape) -> tuple:
    """(params, training GFLOPs per image, forward GFLOPs, seconds per image here) of a run's student."""
    model = build_student(cfg.student, classes, shape[0], cfg.data.img_size)
    gflops = train_gflops(model, shape)
    precision = resolve(cfg.train.mixed_precision, cuda=False)
    batch = max(1, min(cfg.data.batch_size, int(STEP_FLOPS / (gflops * 1e9))))  # the recipe's, if cheap
    seconds = _seconds_per_image(model, shape, precision or "no", batch)
    return sum(p.numel() for p in model.parameters()), gflops, forward_gflops(model, shape), seconds


def _data_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg.data))


@lru_cache(maxsize=None)
def _teacher_key(model: str, img_size, classes: int, chans: int, stem: bool) -> float:
    teacher = create_model(model, num_classes=classes, in_chans=chans, small_input_stem=stem)
    return forward_gflops(teacher, (chans, img_size, img_size))


def _teacher_gflops(cfg, classes: int, chans: int) -> float:
    size = cfg.teacher.img_size or cfg.data.img_size
    return _teacher_key(cfg.teacher.model, size, classes, chans, cfg.teacher.small_input_stem)


def table(rows: List[dict], complete: Collection[str] = ()) -> str:
    """The dry run's printout: one line per run, then the totals; with runs already `complete` (a study
    resumed: their summary.json exists, so the study skips them), those are marked and a last line
    totals what is left."""
    gpu, cal = any("hours_gpu" in r for r in rows), any("hours_calibrated" in r for r in rows)
    head = f"{'run':32s} {'params':>9s} {'images':>12s} {'student FLOPs':>14s} {'teacher FLOPs':>14s} {'h here':>8s}"
    lines = [head + (f" {'h GPU':>8s}" if gpu else "") + (f" {'h calib.':>8s}" if cal else "")]
    for r in rows:
        line = (f"{r['run']:32s} {r['params'] / 1e6:8.2f}M {r['images']:12,d} {r['flops']:14.3e} "
                f"{r['teacher_flops']:14.3e} {r['hours_here']:8.3f}")
        lines.append(line + (f" {r['hours_gpu']:8.3f}" if gpu else "") +
                     (f" {r.get('hours_calibrated', float('nan')):8.3f}" if cal else "") +
                     ("  complete" if r["run"] in complete else ""))

    def total_line(label: str, some: List[dict]) -> str:
        total = {k: sum(r.get(k, 0.0) for r in some)
                 for k in ("flops", "teacher_flops", "hours_here", "hours_gpu", "hours_calibrated")}
        return (f"{label:32s} {'':9s} {'':12s} {total['flops']:14.3e} {total['teacher_flops']:14.3e} "
                f"{total['hours_here']:8.3f}" + (f" {total['hours_gpu']:8.3f}" if gpu else "")
                + (f" {total['hours_calibrated']:8.3f}" if cal else ""))

    lines.append(total_line(f"total ({len(rows)} runs)", rows))
    left = [r for r in rows if r["run"] not in complete]
    if len(left) < len(rows):
        lines.append(total_line(f"left ({len(left)} runs)", left))
    return "\n".join(lines)
