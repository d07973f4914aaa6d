"""Typed configuration: dataclass defaults <- recipe YAML (+ `base:` chain) <- CLI `key=value`.

A recipe holds only what differs from the defaults below. The merged result is validated
and handed out as plain dataclasses; each component receives the sub-config it needs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from distill.errors import ConfigError  # noqa: F401  (raised here; re-exported)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | imagefolder | hf
    root: str = "data"  # folder of the dataset; for `hf`, a hub id or a save_to_disk folder
    download: bool = True  # fetch cifar10/100 into `root` when missing (needs network)
    train_subset: Optional[int] = None  # first N images of a fixed permutation of the train split
    test_subset: Optional[int] = None
    img_size: int = 32  # smaller images are zero-padded (centred), larger ones resized
    batch_size: int = 128  # per process; the global batch is batch_size x world_size
    eval_batch_size: int = 512
    crop_padding: int = 4  # random crop of img_size from the image padded by this much
    hflip: bool = True
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    label_smoothing: float = 0.1
    aug_seed: Optional[int] = None  # sample order and augmentation; None = `seed` (set it to share a logit cache)
    device_resident: bool = True  # hold in-memory sets whole on the training device
    num_workers: int = 4  # DataLoader workers, for sets decoded per item (imagefolder, streamed hf, crop=rrc)
    # --- real images (issue 12); names mirror timm's train.py flags
    in_memory: Optional[bool] = None  # hf/imagefolder decoded whole up front; None = auto (small hf sets, crop=pad)
    mean: Optional[List[float]] = None  # per channel in [0, 1]; None = the dataset's (hf: from ~1000 train images)
    std: Optional[List[float]] = None
    crop: str = "pad"  # pad: pad-crop + flip on the device | rrc: timm's per-sample transforms in workers
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # rrc: area range of RandomResizedCrop
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # rrc: aspect-ratio range
    interpolation: str = "bicubic"  # rrc: bilinear | bicubic | nearest | lanczos | ... | random (as DeiT)
    auto_augment: Optional[str] = None  # rrc: timm string (rand-m9-mstd0.5-inc1, augmix, v0, 3a) or trivialaugment
    color_jitter: float = 0.4  # rrc: brightness/contrast/saturation factor; timm drops it under auto_augment
    reprob: float = 0.0  # rrc: random-erasing probability (DeiT: 0.25)
    remode: str = "pixel"  # rrc: random-erasing fill: pixel | rand | const
    recount: int = 1  # rrc: random-erasing regions per image
    crop_pct: float = 0.875  # rrc evaluation: resize to img_size / crop_pct, centre-crop img_size
    aug_repeats: int = 1  # repeated augmentation (DeiT: 3): each image r times per epoch, epoch length kept
    mixup_switch_prob: float = 0.5  # chance of CutMix over Mixup when both are on
    mixup_mode: str = "batch"  # batch | pair | elem: one draw per batch, per pair, per sample
    cutmix_minmax: Optional[List[float]] = None  # CutMix box side as fractions [min, max]; forces CutMix


@dataclass
class StudentConfig:
    """The model being trained: a `distill_vit_*` student, or any timm model (a teacher run)."""

    model: str = "distill_vit_tiny"
    drop_path_rate: float = 0.0
    distilled: bool = False  # add a DeiT distillation token and head
    patch_size: Optional[int] = None  # override the size's patch size
    pretrained: bool = False
    small_input_stem: bool = False  # CNNs: 3x3 stride-1 first conv, no max-pool (CIFAR-style)


@dataclass
class TeacherConfig:
    model: Optional[str] = None  # any timm model name; None for plain training
    checkpoint: Optional[str] = None  # .safetensors/.pth file, or a run folder of this framework
    pretrained: bool = False  # hub weights, where the machine can reach the hub
    small_input_stem: bool = False
    img_size: Optional[int] = None  # resize the student's batch to this; None keeps it
    mean: Optional[List[float]] = None  # the teacher's normalisation; None = the data's
    std: Optional[List[float]] = None


DISTILL_TYPES = ("none", "soft", "hard", "kd", "dkd", "feature")  # distill.losses composes one term per type


@dataclass
class DistillConfig:
    type: str = "none"  # none | soft | hard (DeiT) | kd (Hinton, no token) | dkd (decoupled KD) | feature
    alpha: float = 0.5  # weight of the distillation term; (1 - alpha) on the label term
    tau: float = 1.0  # temperature of soft, kd and dkd
    kl_reduction: str = "batchmean"  # soft term: per-sample KL (batchmean) or DeiT's sum / (B * classes) (deit)
    cache: bool = False  # record the teacher's logits once per view, replay them in later runs (distill.cache)
    cache_topk: Optional[int] = None  # store only the top-k classes per view (fp16 + int16); None/0 = every logit
    dkd_alpha: float = 1.0  # dkd: weight of TCKD, the target-vs-rest term
    dkd_beta: float = 8.0  # dkd: weight of NCKD, the among-non-targets term (paper: 8 on CIFAR-100)
    feature_layer: int = -1  # feature: the student block whose pooled tokens are matched (negative: from the end)
    teacher_feature_layer: int = -1  # feature: the teacher's intermediate (timm forward_intermediates index)


@dataclass
class TrainConfig:
    epochs: int = 200
    lr: float = 3e-4  # at a global batch of lr_base_batch; scaled linearly (DeiT rule)
    lr_base_batch: int = 512
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: Optional[float] = None  # max global grad norm; None = no clipping
    grad_accum_steps: int = 1
    mixed_precision: Optional[str] = None  # no | fp16 | bf16; None = Accelerate's config
    ema: bool = False
    ema_decay: float = 0.9998
    resume: str = ""  # "" = new run, "auto" = latest checkpoint of this run name, or a path
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_every: int = 1  # epochs between checkpoints (and after the last)
    checkpoint_every_steps: int = 0  # also mid-epoch, every N steps; 0 = off
    keep_checkpoints: int = 2
    log_every: int = 50  # steps between progress updates (each one syncs with the device)
    on_nonfinite: str = "stop"  # stop | skip (skipping syncs with the device every step)
    compile: bool = False
    cuda_graphs: bool = False  # capture the whole step in a CUDA graph (1 GPU, in-memory data)
    deterministic: bool = False
    dist_timeout_s: float = 600.0  # a collective waits this long for a lost process before the job ends


@dataclass
class Config:
    name: Optional[str] = None  # run folder name; defaults to the recipe file's stem
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "data.name": ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "hf"),
    "data.crop": ("pad", "rrc"),
    "data.interpolation": ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random"),
    "data.remode": ("pixel", "rand", "const"),
    "data.mixup_mode": ("batch", "pair", "elem"),
    "distill.type": DISTILL_TYPES,
    "distill.kl_reduction": ("batchmean", "deit"),
    "train.mixed_precision": (None, "no", "fp16", "bf16"),
    "train.on_nonfinite": ("stop", "skip"),
}
POSITIVE = ("data.img_size", "data.batch_size", "data.eval_batch_size", "train.epochs",
            "train.lr", "train.lr_base_batch", "train.grad_accum_steps", "train.keep_checkpoints",
            "train.eval_every", "train.checkpoint_every",
            "train.log_every", "train.dist_timeout_s", "distill.tau")
NON_NEGATIVE = ("data.crop_padding", "data.mixup_alpha", "data.cutmix_alpha", "data.num_workers", "data.color_jitter",
                "train.min_lr", "train.warmup_epochs", "train.weight_decay",
                "train.checkpoint_every_steps", "student.drop_path_rate", "distill.dkd_alpha", "distill.dkd_beta")
UNIT_INTERVAL = ("distill.alpha", "data.label_smoothing", "data.mixup_prob", "train.ema_decay", "data.reprob",
                 "data.mixup_switch_prob", "data.crop_pct")


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """Read one recipe and the `base:` chain under it (a path or a list of paths, relative to the
    recipe), the recipe's own keys winning."""
    if path in seen:
        raise ConfigError(f"recipe {path}: `base:` chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found; pass a YAML file such as recipes/fashion_mnist/plain_tiny.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe {path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = base if isinstance(base, list) else [base]  # several bases merge in order
    parents = [_read_yaml((path.parent / str(b)).resolve(), seen + (path,)) for b in bases]
    return OmegaConf.to_container(OmegaConf.merge(*parents, raw))


def _check_values(cfg: Config) -> None:
    def get(key):
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    for key, allowed in CHOICES.items():
        if get(key) not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"{key}={get(key)!r} is not one of: {shown}")
    for key in POSITIVE:
        if get(key) <= 0:
            raise ConfigError(f"{key}={get(key)} must be > 0")
    for key in NON_NEGATIVE:
        if get(key) < 0:
            raise ConfigError(f"{key}={get(key)} must be >= 0")
    for key in UNIT_INTERVAL:
        if not 0.0 <= get(key) <= 1.0:
            raise ConfigError(f"{key}={get(key)} must be in [0, 1]")
    for key in ("data.train_subset", "data.test_subset", "teacher.img_size", "student.patch_size"):
        if get(key) is not None and get(key) <= 0:
            raise ConfigError(f"{key}={get(key)} must be > 0 (or null for none)")
    if cfg.distill.cache_topk is not None and cfg.distill.cache_topk < 0:
        raise ConfigError(f"distill.cache_topk={cfg.distill.cache_topk} must be >= 0 (0 or null: dense storage)")
    _check_data(cfg.data)
    if cfg.distill.type != "none" and not cfg.teacher.model:
        raise ConfigError(f"distill.type={cfg.distill.type} needs a teacher: "
                          "set teacher.model (and teacher.checkpoint)")
    distilling = ", ".join(t for t in DISTILL_TYPES if t != "none")
    if cfg.distill.cache and cfg.distill.type == "none":
        raise ConfigError(f"distill.cache=true needs a teacher: distill.type={{{distilling}}} (a plain run has none)")
    if cfg.student.distilled and cfg.distill.type in ("none", "kd", "feature"):
        raise ConfigError(f"student.distilled=true needs distill.type=soft, hard or dkd (got {cfg.distill.type}: "
                          "kd and feature train the class head alone; set student.distilled=false)")
    if cfg.distill.cache and cfg.distill.type == "feature":
        raise ConfigError("distill.cache=true stores teacher logits, but distill.type=feature matches the teacher's "
                          "features, which it computes live; set distill.cache=false")
    if cfg.distill.kl_reduction != "batchmean" and cfg.distill.type in ("kd", "dkd", "feature"):
        raise ConfigError(f"distill.kl_reduction={cfg.distill.kl_reduction} applies to distill.type=soft only; "
                          "remove it or set distill.type=soft")
    mixing = cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0 or cfg.data.cutmix_minmax is not None
    if mixing and cfg.data.batch_size % 2:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be even under Mixup/CutMix "
                          "(timm pairs each sample with the batch reversed)")
    if cfg.train.resume not in ("", "auto") and not os.path.exists(cfg.train.resume):
        raise ConfigError(f"train.resume={cfg.train.resume}: no such checkpoint; use 'auto' or a checkpoint folder")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name={cfg.name!r} must be a plain folder name (no '/')")


def _check_range(key: str, value, lo: float, hi: float) -> None:
    """A [min, max] pair inside (lo, hi]."""
    if value is not None and not (len(value) == 2 and lo < value[0] <= value[1] <= hi):
        raise ConfigError(f"data.{key}={list(value)} must be two numbers [min, max] with {lo} < min <= max <= {hi}")


def _check_data(d: DataConfig) -> None:
    """The real-image keys: ranges, pairs, and augmentation strings timm must understand."""
    for key in ("aug_repeats", "recount"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key}={getattr(d, key)} must be >= 1")
    _check_range("scale", d.scale, 0.0, 1.0)
    _check_range("ratio", d.ratio, 0.0, float("inf"))
    _check_range("cutmix_minmax", d.cutmix_minmax, 0.0, 1.0)
    if d.crop_pct == 0:
        raise ConfigError("data.crop_pct=0 must be in (0, 1]")
    if (d.mean is None) != (d.std is None) or (d.std is not None and (len(d.mean) != len(d.std) or min(d.std) <= 0)):
        raise ConfigError(f"data.mean={d.mean} / data.std={d.std}: set both, one value per channel, std > 0")
    if d.crop == "pad" and (d.auto_augment or d.reprob > 0):
        raise ConfigError("data.auto_augment and data.reprob act on per-sample transforms: set data.crop=rrc")
    if d.auto_augment:
        from distill.transforms import check_auto_augment  # imports timm: only when a string is given

        check_auto_augment(d.auto_augment)


def load_config(recipe: Optional[str], overrides: List[str] = ()) -> Config:
    """Resolve a recipe file (or the defaults, if None) and `key=value` overrides."""
    raw = _read_yaml(Path(recipe).resolve()) if recipe else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=2)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        hint = "; see `distill config` for the valid keys" if "not in" in msg else ""
        raise ConfigError(f"{key}: {msg}{hint}") from None
    if cfg.name is None:
        cfg.name = Path(recipe).stem if recipe else "run"
    if cfg.train.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false: Accelerate's "no"
        cfg.train.mixed_precision = "no"
    _check_values(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
