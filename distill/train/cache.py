"""Teacher-logit cache (`distill.cache=true`): the teacher runs once per augmented view, ever.

Every view a student sees is a pure function of (aug seed, epoch, step, rank): the sample order,
the crops and flips (`distill.data.augment`, seeded by `distill.data.seeds`) and the Mixup/CutMix draws. So the teacher's logits for
it can be recorded by the first distilled run and replayed by every later one with the same
views, as TinyViT does: other student sizes, other init seeds (`seed`; the views follow
`data.aug_seed`), other distillation types. A run records an epoch's logits while it computes
them live and writes them when the epoch is whole, one file per epoch and process, in the dtype
the teacher produced (so a replay is exact). Files live next to the teacher's run, under a folder
named by a hash of everything that defines the views and the teacher. At the start of each
cached epoch the live teacher is compared with the cache on one batch; a mismatch is an error.

Storage: dense (every logit, in the teacher's dtype) or, with `distill.cache_topk=k` below the class
count, TinyViT's compact layout plus one number: per view the k largest log-probabilities and the log of
the rest of the mass as fp16, and the k class indices as int16, 4k + 2 bytes instead of 2C (fp16) or 4C
(fp32). See `topk_encode` / `topk_decode`.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

from distill.config import Config, view_keys
from distill.errors import CacheError, ConfigError
from distill.runs import durable

CHECK_SAMPLES = 8  # views of each cached epoch's first batch that are compared with the live teacher
INDEX_LIMIT = 2 ** 15  # class indices are stored as int16


def resolve_topk(topk: Optional[int], num_classes: int) -> Optional[int]:
    """The k to store, or None for dense storage (`distill.cache_topk` unset, 0, or covering all classes)."""
    if not topk or topk == num_classes:
        return None
    if topk > num_classes:
        raise ConfigError(f"distill.cache_topk={topk} is larger than the dataset's {num_classes} classes; "
                          f"set it to at most {num_classes} (or 0 for dense storage)")
    if num_classes > INDEX_LIMIT:
        raise ConfigError(f"distill.cache_topk stores class indices as int16, but the dataset has {num_classes} "
                          f"classes (> {INDEX_LIMIT}); set distill.cache_topk=0 (dense storage)")
    return topk


def log_rest(lp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `indices` (B, k), from fp32 log-probabilities `lp` (B, C): (B,).

    = logsumexp(other logits) - logsumexp(all logits), summed in log space: 1 - sum(kept p) is 0 in fp32
    once a confident teacher's top log-probability rounds to 0 (a lead of about 20). Clamped to fp16's
    lowest finite value, so a rest of exactly 0 (every other logit -inf) stays finite: no 0 * -inf in a KL.
    """
    rest = lp.scatter(-1, indices, -math.inf).logsumexp(dim=-1)
    return rest.clamp_min(torch.finfo(torch.float16).min)


def topk_encode(logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, C) -> values, fp16 (B, k + 1): the k largest log-probabilities at tau=1, descending, then
    `log_rest` of the other classes; and the k classes' indices, int16 (B, k).

    Classes are ranked by a stable sort of the logits themselves, so the first index is exactly the
    class `argmax` picks, ties included (its first maximal index).
    """
    logits = logits.float()
    indices = logits.sort(dim=-1, descending=True, stable=True).indices[:, :k]  # (B, k)
    lp = logits.log_softmax(dim=-1)  # (B, C)
    values = torch.cat([lp.gather(-1, indices), log_rest(lp, indices)[:, None]], dim=-1)  # (B, k + 1)
    return values.half(), indices.short()


def topk_decode(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense logits (B, C), fp32, from `topk_encode`'s (values, indices).

    The rest of the probability mass (TinyViT's rule): the k kept classes keep their probabilities
    p_i; the stored rest, the true mass of the other C - k classes (to fp16's 2^-11 relative rounding
    of its log), is spread uniformly over them. The logits returned are those log-probabilities, so
    softmax(logits) is exactly that distribution at tau=1 (up to that rounding).
    - soft distillation at tau != 1 divides them by tau: the kept classes keep their exact ratios
      to one another, exp((z_i - z_j) / tau); the flat tail carries at least the true tail's mass at
      tau > 1 and at most at tau < 1 (power-mean inequality), equal when the true tail is flat, the
      error growing as k shrinks. A confident teacher's tail survives tau: its rest is stored, not
      recomputed from the kept p_i.
    - hard distillation: the argmax is exact. The first stored class is made the strict maximum
      (a one-ulp fp32 nudge where fp16 rounding tied it with the second or the tail).
    """
    values = values.float()
    lp, rest = values[:, :-1], values[:, -1:]  # (B, k) log-probabilities, descending; (B, 1) log rest
    k = lp.shape[-1]
    tail = (rest - math.log(num_classes - k)).minimum(lp[:, -1:])  # never above a kept class
    others = torch.cat([lp[:, 1:], tail], dim=-1).amax(-1)  # (B,) the largest entry but the first
    top = torch.where(lp[:, 0] > others, lp[:, 0], torch.nextafter(others, torch.full_like(others, math.inf)))
    lp = torch.cat([top[:, None], lp[:, 1:]], dim=-1)
    return tail.expand(-1, num_classes).clone().scatter_(-1, indices.long(), lp)


IMAGENET_FILL = [124, 116, 104]  # timm's img_mean for ImageNet's mean: what the device path filled with before


def cache_key(cfg: Config, world_size: int, mixed_precision: str, mean: Sequence[float] = ()) -> dict:
    """Everything that decides the views and the teacher's answer to them. `mean`: the split's."""
    ckpt = cfg.teacher.checkpoint
    weights = Path(ckpt) / "student.safetensors" if ckpt and Path(ckpt).is_dir() else Path(ckpt or "")
    stat = weights.stat() if weights.is_file() else None
    return {"teacher": vars(cfg.teacher) | {"checkpoint": str(weights.resolve()) if stat else None},
            "weights": [stat.st_size, stat.st_mtime_ns] if stat else None,
            # a teacher with neither a file nor hub weights is a random init, which follows `seed`
            "init_seed": None if stat or cfg.teacher.pretrained else cfg.seed,
            **view_keys(cfg.data),  # {"data": ..., "views": ...}: the keys marked `views` in DataConfig
            "aug_seed": cfg.data.aug_seed, "world_size": world_size, "mixed_precision": mixed_precision,
            **device_fill_key(cfg, mean)}


def device_fill_key(cfg: Config, mean: Sequence[float]) -> dict:
    """`data.augment_on=device` once filled RandAugment's geometric ops with ImageNet's mean on every set;
    it now fills with the split's, as the workers do. Where the two differ the views changed, so the fill
    joins the key and a cache of the old views is never replayed; caches of ImageNet-statistics sets
    (whose views did not change) keep their key."""
    data = cfg.data
    if data.crop != "rrc" or data.augment_on != "device" or not data.auto_augment:
        return {}
    fill = [min(255, round(255 * m)) for m in mean]  # timm's img_mean
    return {} if fill == IMAGENET_FILL else {"device_fill": fill}


def cache_root(cfg: Config) -> Path:
    """Next to the teacher's run when the teacher is a run folder, else under output_dir."""
    ckpt = cfg.teacher.checkpoint
    return (Path(ckpt) if ckpt and Path(ckpt).is_dir() else Path(cfg.output_dir)) / "logit_cache"


def record_buffer(logits: torch.Tensor, steps: int) -> torch.Tensor:
    """Room for an epoch's `steps` batches like `logits`, in host memory: a dense ImageNet epoch is ~2.6 GB
    in bf16, too much to hold on the GPU beside training. Pinned when the logits come from a GPU, so each
    step's copy is asynchronous."""
    return torch.empty((steps, *logits.shape), dtype=logits.dtype, device="cpu", pin_memory=logits.is_cuda)


class LogitCache:
    """One process's cache files. `topk`: from `resolve_topk` (None = dense); part of the key."""

    def __init__(self, root: Path, key: dict, rank: int, world_size: int, steps_per_epoch: int,
                 topk: Optional[int] = None, num_classes: int = 0):
        if topk:  # only then: a dense cache keeps the key (and folder) it had before top-k existed
            # layout 2 stores the log rest after the k values; a layout-1 folder (k values only) is never read
            key = {**key, "topk": topk, "topk_layout": 2}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir, self.rank, self.world_size, self.steps = Path(root) / digest, rank, world_size, steps_per_epoch
        self.topk, self.num_classes = topk, num_classes
        self.dir.mkdir(parents=True, exist_ok=True)
        if rank == 0 and not (self.dir / "key.json").exists():
            durable.write_text(self.dir / "key.json", json.dumps(key, indent=2, sort_keys=True, default=str),
                               f"teacher-logit cache {self.dir / 'key.json'}")
        # the epoch being replayed, and the same being filled live: {"logits": (steps, B, C)} dense,
        # {"values": (steps, B, k + 1) fp16, "indices": (steps, B, k) int16} top-k
        self.replay: Optional[Dict[str, torch.Tensor]] = None
        self.record: Optional[Dict[str, torch.Tensor]] = None
        self.recorded, self.start_step = 0, 0
        self.copying = False  # copies from the GPU into `record` may still be in flight

    def _path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch:04d}_rank{self.rank}of{self.world_size}.safetensors"

    def has(self, epoch: int) -> bool:
        return self._path(epoch).exists()

    def start_epoch(self, epoch: int, start_step: int, device) -> bool:
        """Load the epoch if it is cached; else prepare to record it. Returns True if cached."""
        self.record, self.recorded, self.start_step = None, 0, start_step
        self.replay = load_file(str(self._path(epoch)), device=str(device)) if self.has(epoch) else None
        return self.replay is not None

    def _stored(self, logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.topk is None:
            return {"logits": logits}
        values, indices = topk_encode(logits, self.topk)
        return {"values": values, "indices": indices}

    def get(self, step: int) -> torch.Tensor:
        """The step's logits (B, C): as recorded (dense), or reconstructed by `topk_decode`."""
        if self.topk is None:
            return self.replay["logits"][step]
        return topk_decode(self.replay["values"][step], self.replay["indices"][step], self.num_classes)

    def put(self, step: int, logits: torch.Tensor) -> None:
        if self.start_step:  # a resumed epoch misses its first steps: it cannot be recorded whole
            return
        stored = self._stored(logits)
        if self.record is None:
            self.record = {n: record_buffer(t, self.steps) for n, t in stored.items()}
        for n, t in stored.items():  # from a GPU: queued behind the step, the host does not wait
            self.record[n][step].copy_(t, non_blocking=True)
            self.copying |= t.is_cuda
        self.recorded += 1

    def end_epoch(self, epoch: int) -> None:
        if self.copying:  # the last steps' copies must have landed before the file is written
            torch.cuda.synchronize()
            self.copying = False
        if self.record is not None and self.recorded == self.steps:
            tensors, path = dict(self.record), self._path(epoch)
            durable.replace_file(path, lambda tmp: save_file(tensors, str(tmp)), f"teacher-logit cache {path}")
        self.record, self.replay = None, None

    def check(self, step: int, live: torch.Tensor, where: str) -> None:
        """The cache must hold what the teacher gives now for the step's first len(live) views (up to
        kernel nondeterminism): the logits (dense), or the top-k log-probabilities, their classes and the
        log rest. For top-k, the live log-probabilities at the stored classes and the live top-k values
        (whatever their order among near-ties) are both compared with the stored values, and the live
        `log_rest` outside the stored classes with the stored one."""
        n = len(live)
        live = live.float()
        tol = 1e-2 * (live.abs().max().item() + 1e-6)
        if self.topk is None:
            diff = (live - self.replay["logits"][step][:n].float()).abs().max().item()
        else:
            values, indices = self.replay["values"][step][:n].float(), self.replay["indices"][step][:n].long()
            kept, rest = values[:, :-1], values[:, -1]  # (n, k), (n,)
            lp = live.log_softmax(dim=-1)
            diff = max((lp.gather(-1, indices) - kept).abs().max().item(),
                       (lp.topk(self.topk, dim=-1).values - kept).abs().max().item(),
                       # less the rest's own fp16 rounding: a clamped -65504 must not widen every other bound
                       ((log_rest(lp, indices) - rest).abs() - 2 ** -10 * rest.abs()).max().item())
            tol += 2 ** -10 * kept.abs().max().item()  # fp16 rounds to within 2^-11 of the value
        if diff > tol:
            raise CacheError(f"cached teacher logits at {where} differ from the live teacher (max |diff| {diff:.3g}); "
                             "the cache is stale: delete it or set distill.cache=false")
