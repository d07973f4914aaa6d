"""The learning-rate schedule as a pure function of the update (nanoGPT's `get_lr`), and the rule that
lets a warmup-stable-decay run branch a shorter budget from its stable phase.

`cosine`: linear warm-up, then cosine decay to `min_lr` over the rest of the run (DeiT's).
`wsd`: linear warm-up, the peak held, then a cooldown over the last `train.cooldown` fraction of the
run, linear or 1-sqrt (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations": a cooldown of 10-20% with 1-sqrt matches cosine at each length). Until its
cooldown starts, a `wsd` run's schedule does not depend on its length, so one long run's stable-phase
checkpoint starts every shorter budget: a fork (`train.resume=<its checkpoint> name=<new run>
train.epochs=<shorter>`) is the same run, bit for bit, as training that budget from scratch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from distill.config import may_differ_on_resume
from distill.errors import ConfigError
from distill.runs.checkpoint import checkpoint_step
from distill.runs.folder import differing_key


def cooldown_start(total: int, cooldown: float) -> int:
    """The first update of a `wsd` run's cooldown, for `total` updates."""
    return total - int(round(cooldown * total))


def lr_factor(tick: int, total: int, warmup: int, floor: float, kind: str = "cosine", cooldown: float = 0.2,
              shape: str = "1-sqrt", per_update: int = 1) -> float:
    """The learning rate at `tick` as a fraction of the peak. `total` and `warmup` count updates; a
    tick is 1/per_update of an update (Accelerate's scheduler ticks once per process); `floor` =
    min_lr / peak, the value both schedules end on."""
    total, warmup = total * per_update, warmup * per_update  # in ticks
    if tick < warmup:
        return (tick + per_update) / (warmup + per_update)
    if kind == "cosine":
        progress = (tick - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    start = max(cooldown_start(total // per_update, cooldown) * per_update, warmup)
    if tick < start:
        return 1.0
    progress = min((tick - start) / max(1, total - start), 1.0)
    decay = 1 - progress if shape == "linear" else 1 - math.sqrt(progress)
    return floor + (1 - floor) * decay


def fork_source(checkpoint: Path, run_dir: Path) -> Optional[Path]:
    """The run folder a `train.resume=<checkpoint>` branches from, or None for this run's own."""
    source = checkpoint.resolve().parent.parent  # <run>/checkpoints/step_N
    return None if source == run_dir.resolve() else source


def check_fork(cfg, checkpoint: Path, source: Path, updates_per_epoch: int) -> None:
    """Refuse, in one line, a fork that would not be the run it claims to be: another run's checkpoint
    starts this one only if the two differ in nothing but their length (and what a resume may change),
    and, for a different length, only from the stable phase of a `wsd` schedule that both share."""
    if not (source / "config.yaml").is_file():
        raise ConfigError(f"train.resume={checkpoint}: not a checkpoint of a run folder (no {source}/config.yaml)")
    found = differing_key(cfg, source, may_differ_on_resume() | {"name"})
    if found:
        key, now, saved = found
        raise ConfigError(f"train.resume={checkpoint} forks {source}, whose {key} is {saved!r}, not {now!r}: a fork "
                          "differs from its run only in train.epochs; set the same value, or start afresh")
    epochs = OmegaConf.load(source / "config.yaml").train.epochs
    if epochs == cfg.train.epochs:
        return
    if cfg.train.schedule != "wsd":
        raise ConfigError(f"train.resume={checkpoint}: a fork of {epochs} into {cfg.train.epochs} epochs needs "
                          "train.schedule=wsd (a cosine schedule's every step depends on the run's length)")
    update = checkpoint_step(str(checkpoint)) // cfg.train.grad_accum_steps
    last = min(cooldown_start(n * updates_per_epoch, cfg.train.cooldown) for n in (epochs, cfg.train.epochs))
    if update > last:
        raise ConfigError(f"train.resume={checkpoint} is at update {update}, past update {last}, where the "
                          f"cooldown of the {min(epochs, cfg.train.epochs)}-epoch run starts: fork from an earlier "
                          "checkpoint (train.checkpoint_every / checkpoint_every_steps keep them)")
