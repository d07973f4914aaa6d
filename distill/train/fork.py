"""Cooldown forks: a `wsd` run's stable-phase checkpoint starts every shorter budget. Until its cooldown
starts, a `wsd` run's schedule (`distill/schedule.py`) does not depend on its length, so a fork
(`train.resume=<its checkpoint> name=<new run> train.epochs=<shorter>`) is the same run, bit for bit,
as training that budget from scratch; this module says which checkpoint a resume forks and refuses a
fork that would not be that run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from distill.config import may_differ_on_resume
from distill.errors import ConfigError
from distill.runs.checkpoint import checkpoint_step
from distill.runs.folder import differing_key
from distill.schedule import cooldown_start


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
