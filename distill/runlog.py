"""The run folder's records: config.yaml, metrics.jsonl, summary.json, provenance, TensorBoard.

TensorBoard goes through Accelerate's tracker (`log_with="tensorboard"`); the JSON files are
written by the main process only, each with a temporary name and a rename.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

METRICS, SUMMARY, CONFIG = "metrics.jsonl", "summary.json", "config.yaml"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, before_epoch: int) -> None:
    """Drop lines of epochs that a resume will run again (written after the last checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r["epoch"] < before_epoch]
    path = Path(run_dir) / METRICS
    tmp = path.with_name(f".{METRICS}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def _git_commit() -> str | None:
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
        "git_commit": _git_commit(),
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


def run_summary(cfg, run, history: list, last_eval: dict, wall_s: float, extra: dict, device, world_size) -> dict:
    """summary.json: the run's final and best accuracy, cost, identity and provenance.

    `run` is the `distill.build.Run`; `last_eval` the last evaluation's metrics; `extra` more keys."""
    return {
        "name": cfg.name, "best_top1": max((r["top1"] for r in history if "top1" in r), default=None),
        "final_top1": last_eval.get("top1"), "final_top5": last_eval.get("top5"), "epochs": cfg.train.epochs,
        "params": run.params, "gflops": run.gflops, "world_size": world_size, "global_batch": run.global_batch,
        "lr": run.lr, "wall_s": wall_s,
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / max(len(history), 1),
        "student": cfg.student.model, "teacher": cfg.teacher.model if run.teacher is not None else None,
        "distill_type": cfg.distill.type, "seed": cfg.seed, "dataset": cfg.data.name,
        "skipped_steps": run.progress.skipped_steps, **extra,
        **{k: last_eval[k] for k in ("top1_cls", "top1_dist", "ema_top1") if k in last_eval},
        **provenance(device, world_size),
    }
