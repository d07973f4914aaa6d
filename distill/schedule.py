"""The learning-rate schedule as a pure function of the update (nanoGPT's `get_lr`): the trainer reads it
per update and the study planner (`distill/report/ladder.py`) reads where a cooldown starts.

`cosine`: linear warm-up, then cosine decay to `min_lr` over the rest of the run (DeiT's).
`wsd`: linear warm-up, the peak held, then a cooldown over the last `train.cooldown` fraction of the
run, linear or 1-sqrt (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations": a cooldown of 10-20% with 1-sqrt matches cosine at each length). Until its
cooldown starts, a `wsd` run's schedule does not depend on its length, so one long run's stable-phase
checkpoint starts every shorter budget (`distill/train/fork.py`).
"""
from __future__ import annotations

import math


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
