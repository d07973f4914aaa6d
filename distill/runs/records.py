"""The run folder's records: config.yaml, metrics.jsonl, summary.json, provenance, TensorBoard.

TensorBoard and the other trackers go through Accelerate (`distill.runs.trackers`); the JSON files are
written by the main process only, each durably (`distill.runs.durable`): a temporary name, a flush,
a rename.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from distill.data.sources import SOURCES
from distill.runs import durable
from distill.runs.checkpoint import utc_now

METRICS, SUMMARY, CONFIG = "metrics.jsonl", "summary.json", "config.yaml"


def write_json_atomic(path: Path, data: dict) -> None:
    durable.write_text(path, json.dumps(data, indent=2) + "\n", str(path))


def read_metrics(run_dir: Path) -> list:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, before_epoch: int) -> None:
    """Drop lines of epochs that a resume will run again (written after the last checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r["epoch"] < before_epoch]
    path = Path(run_dir) / METRICS
    durable.write_text(path, "".join(json.dumps(r) + "\n" for r in kept), str(path))


def append_metrics(run_dir: Path, record: dict) -> None:
    path = Path(run_dir) / METRICS
    durable.append_line(path, json.dumps(record) + "\n", str(path))


@contextmanager
def tracker_writes(run_dir: Path):
    """Around Accelerate's tracker calls (`init_trackers`, `log`, `end_training`): a full disk under
    the run's `tensorboard/` becomes `OutOfSpaceError`.

    TensorBoard writes from a background thread; on a full disk that thread dies with the OSError
    and the next flush raises it again in the caller (Accelerate flushes after every `log`): the
    run stops at that call, it does not hang."""
    _quiet_tensorboard_thread()
    with durable.out_of_space(f"TensorBoard events in {Path(run_dir) / 'tensorboard'}", run_dir):
        yield


def log(accelerator, run_dir: Path, values: dict, step: int) -> None:
    """`accelerator.log`, with a full disk reported as `OutOfSpaceError`."""
    with tracker_writes(run_dir):
        accelerator.log(values, step=step)


def _quiet_tensorboard_thread() -> None:
    """Keep TensorBoard's dying writer thread from printing a traceback for a full disk: the
    caller's next flush raises the same error, and the CLI reports it in one line."""
    previous = threading.excepthook
    if getattr(previous, "distill_quiets_full_disk", False):
        return

    def hook(args):
        if not (type(args.thread).__name__ == "_AsyncWriterThread"
                and durable.is_out_of_space(args.exc_value)):
            previous(args)

    hook.distill_quiets_full_disk = True
    threading.excepthook = hook


@functools.cache
def git_commit() -> str | None:
    """The commit of the code this process runs, "+dirty" with uncommitted changes: read once, as the run
    starts (`Trainer` asks first), since a commit made while it trains does not change the code it imported."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(device: torch.device, world_size: int) -> dict:
    """What produced a run: code version, library versions, hardware."""
    import accelerate
    import timm

    if device.type == "cuda":
        hardware = f"{world_size} x {torch.cuda.get_device_name(device)}"
    else:
        hardware = f"{world_size} x CPU process ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "hardware": hardware,
        "hostname": platform.node(),
    }


def epoch_record(epoch: int, terms: dict, lr: float, metrics: dict, img_s: float, epoch_s: float) -> dict:
    """One line of metrics.jsonl: the epoch's mean loss terms, learning rate, evaluation and speed."""
    return {"epoch": epoch, **{f"loss_{k}" if k != "loss" else "loss": v for k, v in terms.items()},
            "lr": lr, **metrics, "train_img_per_s": img_s, "epoch_s": epoch_s}


def compute(cfg, run, epoch_images: int) -> dict:
    """The run's training compute in FLOPs (`torch.utils.flop_counter` counts, per image, times images):
    the student's forward and backward over every image trained, and the teacher's forwards this run
    actually ran (`teacher_views`: all views live or while recording the logit cache, the replay
    check's few otherwise). `logit_cache` names the cache folder, so a report can share the cost of
    a recording among the runs that replay it."""
    images = cfg.train.epochs * epoch_images
    cache = run.teacher_logits.cache
    return {"images": images, "train_gflops_per_image": run.cost.train_gflops,
            "flops": run.cost.train_gflops * 1e9 * images, "teacher_gflops_per_image": run.cost.teacher_gflops,
            "teacher_views": run.progress.teacher_views,
            "teacher_flops": run.cost.teacher_gflops * 1e9 * run.progress.teacher_views,
            "logit_cache": cache.dir.name if cache is not None else None}


def data_copy(data) -> Optional[dict]:
    """Which resized copy (`distill prepare`) an image folder is, from its prepare.json; None otherwise."""
    copy_of = SOURCES[data.name].copy_of if data.name in SOURCES else None
    return copy_of(data.root) if copy_of and data.root else None


def run_summary(cfg, run, history: list, wall_s: float, extra: dict, device, world_size,
                mixed_precision: str = "no") -> dict:
    """summary.json: the run's final and best accuracy, cost, identity and provenance.

    `run` is the `distill.train.build.Run`; `history` the lines of metrics.jsonl, whose last evaluated epoch
    gives the final accuracy (also after a resume that starts past it); `extra` more keys."""
    last_eval = next((r for r in reversed(history) if "top1" in r), {})
    epoch_images = run.data.steps_per_epoch * run.global_batch // cfg.train.grad_accum_steps
    return {
        "name": cfg.name, "best_top1": max((r["top1"] for r in history if "top1" in r), default=None),
        "final_top1": last_eval.get("top1"), "final_top5": last_eval.get("top5"),
        "test_loss": last_eval.get("test_loss"), "epochs": cfg.train.epochs,
        "params": run.cost.params, "gflops": run.cost.gflops, "world_size": world_size,
        "global_batch": run.global_batch, "lr": run.lr, "wall_s": wall_s, "epoch_images": epoch_images,
        **compute(cfg, run, epoch_images), "mixed_precision": mixed_precision,
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / max(len(history), 1),
        "student": cfg.student.model, "teacher": cfg.teacher.model if run.teacher is not None else None,
        "distill_type": cfg.distill.type, "seed": cfg.seed, "dataset": cfg.data.name,
        "skipped_steps": run.progress.skipped_steps, "data_copy": data_copy(cfg.data), **extra,
        **{k: last_eval[k] for k in ("top1_cls", "top1_dist", "ema_top1") if k in last_eval},
        # UTC; a resumed run keeps its first start (None: resumed from a checkpoint older than the record)
        "started_at": run.progress.started_at, "finished_at": utc_now(),
        **provenance(device, world_size),
    }
