"""Checkpoints that cannot be half-written: Accelerate's `save_state` into a hidden temporary
folder, flushed to disk, then one rename (`distill.runs.durable`). A run killed during a save leaves
only the temporary folder, which is ignored; resume takes the newest complete checkpoint. A save
that fills the disk removes its temporary folder and stops with `OutOfSpaceError`.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from distill.errors import CheckpointError, first_line
from distill.runs import durable

CHECKPOINTS = "checkpoints"
_DONE = "COMPLETE"


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the millisecond (`2026-12-06T02:04:44.123+00:00`): what a run's
    `started_at`/`finished_at` and a prediction's lock are compared by."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Progress:
    """Where the run stands; saved with every checkpoint through `register_for_checkpointing`."""

    def __init__(self):
        self.epoch = 0  # the epoch in progress
        self.step = 0  # micro-batches of that epoch already done
        self.best_top1 = 0.0
        self.skipped_steps = 0  # non-finite steps skipped (train.on_nonfinite=skip)
        self.wall_s = 0.0  # training time up to the checkpoint (a resumed run counts on from it)
        self.partial_sums = {}  # loss sums of the epoch in progress, so its metrics line is whole
        self.partial_steps = 0
        self.teacher_views = 0  # views the teacher ran on (live, or recording the cache; the replay's checks)
        self.started_at = utc_now()  # when the run first started; a resume loads the checkpoint's
        self.precision = None  # what it computes in (Accelerate's mixed_precision); a resume must match it


    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        # checkpoints written before the count began, or before the start or precision was recorded (unknown)
        vars(self).update({"teacher_views": 0, "started_at": None, "precision": None, **state})


def complete_checkpoints(run_dir: Path) -> list:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step_") and (p / _DONE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def remove_partial(run_dir: Path) -> None:
    """Delete temporary checkpoint folders that a killed process left behind (never a complete one)."""
    root = Path(run_dir) / CHECKPOINTS
    for tmp in root.glob(".tmp_step_*") if root.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, run_dir: Path, global_step: int, keep: int, model: torch.nn.Module) -> Path:
    """Save model, optimizer, scheduler, scaler, RNG and registered objects; every rank calls this.

    `model` is checked first: non-finite weights never reach a checkpoint.
    """
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckpointError(f"refusing to checkpoint non-finite weights at step {global_step}: the run "
                              "diverged; lower train.lr or set train.clip_grad")
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / f"step_{global_step:09d}", root / f".tmp_step_{global_step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    what = f"checkpoint {final}"
    # every rank writes into the folder (its RNG state); only the main one removes it
    with durable.out_of_space(what, tmp, cleanup=[tmp] if accelerator.is_main_process else []):
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with durable.out_of_space(what, tmp, cleanup=[tmp]):
            (tmp / _DONE).write_text(str(global_step))
            if final.exists():  # the same position saved again after a resume: identical content
                shutil.rmtree(final)
            durable.replace_dir(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> None:
    """Restore everything `save_checkpoint` wrote; a damaged checkpoint is a CheckpointError."""
    path = Path(path)
    if not (path / _DONE).exists():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {_DONE} marker); "
                              "delete it to resume from an earlier one")
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # noqa: BLE001  (any failure to parse means the files are damaged)
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {first_line(e)[:160]}); "
                              "delete it to resume from an earlier one") from None


def save_weights_atomic(state_dict: dict, path: Path) -> None:
    """safetensors file written to a temporary name, flushed, then renamed into place."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    durable.replace_file(path, lambda tmp: save_file(tensors, str(tmp)), f"weights {path}")


def checkpoint_step(resume: str) -> int:
    """The global step of a `train.resume=<run>/checkpoints/step_N` (0 for none or `auto`)."""
    name = Path(resume).name if resume and resume != "auto" else ""
    return int(name.split("_")[-1]) if name.startswith("step_") else 0
