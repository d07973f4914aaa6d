"""Teacher-logit cache (`distill.cache=true`): the teacher runs once per augmented view, ever.

Every view a student sees is a pure function of (aug seed, epoch, step, rank): the sample order,
the crops and flips (`distill.augment`) and the Mixup/CutMix draws. So the teacher's logits for
it can be recorded by the first distilled run and replayed by every later one with the same
views, as TinyViT does: other student sizes, other init seeds (`seed`; the views follow
`data.aug_seed`), other distillation types. A run records an epoch's logits while it computes
them live and writes them when the epoch is whole, one file per epoch and process, in the dtype
the teacher produced (so a replay is exact). Files live next to the teacher's run, under a folder
named by a hash of everything that defines the views and the teacher. At the start of each
cached epoch the live teacher is compared with the cache on one batch; a mismatch is an error.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from distill import durable
from distill.config import Config
from distill.errors import CacheError  # noqa: F401  (raised here; re-exported)

VIEW_KEYS = ("root", "in_memory", "mean", "std", "crop", "scale", "ratio", "interpolation", "auto_augment",
             "color_jitter", "reprob", "remode", "recount", "aug_repeats", "mixup_switch_prob", "mixup_mode",
             "cutmix_minmax")
CHECK_SAMPLES = 8  # views of each cached epoch's first batch that are compared with the live teacher


def cache_key(cfg: Config, world_size: int, mixed_precision: str) -> dict:
    """Everything that decides the views and the teacher's answer to them."""
    ckpt = cfg.teacher.checkpoint
    weights = Path(ckpt) / "student.safetensors" if ckpt and Path(ckpt).is_dir() else Path(ckpt or "")
    stat = weights.stat() if weights.is_file() else None
    d = cfg.data
    return {"teacher": vars(cfg.teacher) | {"checkpoint": str(weights.resolve()) if stat else None},
            "weights": [stat.st_size, stat.st_mtime_ns] if stat else None,
            # a teacher with neither a file nor hub weights is a random init, which follows `seed`
            "init_seed": None if stat or cfg.teacher.pretrained else cfg.seed,
            "data": {k: getattr(d, k) for k in ("name", "train_subset", "img_size", "crop_padding", "hflip",
                                                "mixup_alpha", "cutmix_alpha", "mixup_prob", "label_smoothing",
                                                "batch_size")},
            "views": {k: getattr(d, k) for k in VIEW_KEYS},  # the real-image keys (distill.transforms)
            "aug_seed": d.aug_seed if d.aug_seed is not None else cfg.seed, "world_size": world_size,
            "mixed_precision": mixed_precision}


def cache_root(cfg: Config) -> Path:
    """Next to the teacher's run when the teacher is a run folder, else under output_dir."""
    ckpt = cfg.teacher.checkpoint
    return (Path(ckpt) if ckpt and Path(ckpt).is_dir() else Path(cfg.output_dir)) / "logit_cache"


class LogitCache:
    def __init__(self, root: Path, key: dict, rank: int, world_size: int, steps_per_epoch: int):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir, self.rank, self.world_size, self.steps = Path(root) / digest, rank, world_size, steps_per_epoch
        self.dir.mkdir(parents=True, exist_ok=True)
        if rank == 0 and not (self.dir / "key.json").exists():
            durable.write_text(self.dir / "key.json", json.dumps(key, indent=2, sort_keys=True, default=str),
                               f"teacher-logit cache {self.dir / 'key.json'}")
        self.replay: Optional[torch.Tensor] = None  # (steps, B, C) of the epoch being replayed
        self.record: Optional[torch.Tensor] = None  # the same, being filled live
        self.recorded, self.start_step = 0, 0

    def _path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch:04d}_rank{self.rank}of{self.world_size}.safetensors"

    def has(self, epoch: int) -> bool:
        return self._path(epoch).exists()

    def start_epoch(self, epoch: int, start_step: int, device) -> bool:
        """Load the epoch if it is cached; else prepare to record it. Returns True if cached."""
        self.record, self.recorded, self.start_step = None, 0, start_step
        self.replay = load_file(str(self._path(epoch)), device=str(device))["logits"] if self.has(epoch) else None
        return self.replay is not None

    def get(self, step: int) -> torch.Tensor:
        return self.replay[step]

    def put(self, step: int, logits: torch.Tensor) -> None:
        if self.start_step:  # a resumed epoch misses its first steps: it cannot be recorded whole
            return
        if self.record is None:
            self.record = torch.empty((self.steps, *logits.shape), dtype=logits.dtype, device=logits.device)
        self.record[step].copy_(logits)
        self.recorded += 1

    def end_epoch(self, epoch: int) -> None:
        if self.record is not None and self.recorded == self.steps:
            logits, path = self.record.cpu(), self._path(epoch)
            durable.replace_file(path, lambda tmp: save_file({"logits": logits}, str(tmp)),
                                 f"teacher-logit cache {path}")
        self.record, self.replay = None, None

    @staticmethod
    def check(live: torch.Tensor, cached: torch.Tensor, where: str) -> None:
        """Cached logits must be what the teacher gives now (up to kernel nondeterminism)."""
        diff = (live.float() - cached.float()).abs().max().item()
        scale = live.float().abs().max().item() + 1e-6
        if diff > 1e-2 * scale:
            raise CacheError(f"cached teacher logits at {where} differ from the live teacher (max |diff| {diff:.3g}); "
                             "the cache is stale: delete it or set distill.cache=false")
