"""Typed configuration: dataclass defaults <- recipe YAML (+ `base:` chain) <- CLI `key=value`.

A recipe holds only what differs from the defaults below. The merged result is validated
and handed out as plain dataclasses; each component receives the sub-config it needs.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.data.sources import SOURCES
from distill.data.checks import check_data
from distill.errors import ConfigError
from distill.methods import METHODS
from distill.runs.trackers import TRACKERS

# Field metadata, read by the code that needs the list, so that no second list can drift:
VIEWS = "views"  # the key decides the training views (part of the logit cache's key; value: its group there)
MAY_DIFFER = "may_differ"  # a resumed run may change the key (the run's identity is everything else)


def _key(default, **metadata):
    """A dataclass field with metadata (`views=...`, `may_differ=True`); a list default is copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    name: str = _key("fashion_mnist", views="data")  # fashion_mnist | cifar10 | cifar100 | imagefolder | hf
    root: str = _key("data", views="views", may_differ=True)  # folder of the dataset; for `hf`, a hub id or a save_to_disk folder
    download: bool = True  # fetch cifar10/100 into `root` when missing (needs network)
    train_subset: Optional[int] = _key(None, views="data")  # first N images of a fixed permutation of the train split
    test_subset: Optional[int] = None
    img_size: int = _key(32, views="data")  # smaller images are zero-padded (centred), larger ones resized
    batch_size: int = _key(128, views="data")  # per process; the global batch is batch_size x world_size
    eval_batch_size: int = 512
    crop_padding: int = _key(4, views="data")  # random crop of img_size from the image padded by this much
    hflip: bool = _key(True, views="data")
    mixup_alpha: float = _key(0.0, views="data")
    cutmix_alpha: float = _key(0.0, views="data")
    mixup_prob: float = _key(1.0, views="data")
    label_smoothing: float = _key(0.1, views="data")
    aug_seed: Optional[int] = None  # sample order and augmentation; None = `seed`, resolved at load (set it to share a logit cache)
    device_resident: bool = _key(True, may_differ=True)  # hold in-memory sets whole on the training device
    # DataLoader workers, for sets decoded per item (imagefolder, streamed hf, crop=rrc); None = min(4, usable cores)
    num_workers: Optional[int] = _key(None, may_differ=True)
    # --- real images (issue 12); names mirror timm's train.py flags
    in_memory: Optional[bool] = _key(None, views="views")  # hf/imagefolder decoded whole up front; None = auto (small hf sets, crop=pad)
    mean: Optional[List[float]] = _key(None, views="views")  # per channel in [0, 1]; None = the dataset's (hf: from ~1000 train images)
    std: Optional[List[float]] = _key(None, views="views")
    crop: str = _key("pad", views="views")  # pad: pad-crop + flip on the device | rrc: timm's per-sample transforms in workers
    scale: List[float] = _key([0.08, 1.0], views="views")  # rrc: area range of RandomResizedCrop
    ratio: List[float] = _key([3 / 4, 4 / 3], views="views")  # rrc: aspect-ratio range
    interpolation: str = _key("bicubic", views="views")  # rrc: bilinear | bicubic | nearest | lanczos | ... | random (as DeiT)
    auto_augment: Optional[str] = _key(None, views="views")  # rrc: timm string (rand-m9-mstd0.5-inc1, augmix, v0, 3a) or trivialaugment
    color_jitter: float = _key(0.4, views="views")  # rrc: brightness/contrast/saturation factor; timm drops it under auto_augment
    reprob: float = _key(0.0, views="views")  # rrc: random-erasing probability (DeiT: 0.25)
    remode: str = _key("pixel", views="views")  # rrc: random-erasing fill: pixel | rand | const
    recount: int = _key(1, views="views")  # rrc: random-erasing regions per image
    # rrc: where RandAugment, normalisation and erasing run: per sample in the workers (timm's views pixel
    # for pixel) | on the device, batch-wise, from the same per-view draws (distill/data/device_views.py)
    augment_on: str = _key("workers", views="views")
    # augment_on=device: who decodes JPEGs: the workers | the device (nvJPEG on a GPU) | auto: the device on CUDA
    decode_on: str = _key("auto", views="views")
    crop_pct: float = 0.875  # rrc evaluation: resize to img_size / crop_pct, centre-crop img_size
    aug_repeats: int = _key(1, views="views")  # repeated augmentation (DeiT: 3): each image r times per epoch, epoch length kept
    mixup_switch_prob: float = _key(0.5, views="views")  # chance of CutMix over Mixup when both are on
    mixup_mode: str = _key("batch", views="views")  # batch | pair | elem: one draw per batch, per pair, per sample
    cutmix_minmax: Optional[List[float]] = _key(None, views="views")  # CutMix box side as fractions [min, max]; forces CutMix


@dataclass
class StudentConfig:
    """The model being trained: a `distill_vit_*` student, or any timm model (a ViT, ConViT or Swin student,
    a teacher run), built for data.img_size where it takes an img_size."""

    model: str = "distill_vit_tiny"
    drop_path_rate: float = 0.0
    distilled: bool = False  # add a DeiT distillation token and head
    patch_size: Optional[int] = None  # override the size's patch size (any model that takes a patch_size)
    embed_dim: Optional[int] = None  # override the size's width (distill_vit_*: a scaling ladder's rungs)
    depth: Optional[int] = None  # override the size's number of blocks
    num_heads: Optional[int] = None  # override the size's attention heads (must divide embed_dim)
    pretrained: bool = False
    small_input_stem: bool = False  # CNNs: 3x3 stride-1 first conv, no max-pool (CIFAR-style)
    # start weights: a timm/DeiT .pth/.safetensors file, a run folder or an exported folder; adapted to the
    # student (position grid, tokens, heads, channels) by timm's loader (distill/train/start.py)
    checkpoint: Optional[str] = _key(None, may_differ=True)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more constructor arguments (e.g. a Swin's window_size)


@dataclass
class TeacherConfig:
    model: Optional[str] = None  # any timm model name; None for plain training
    checkpoint: Optional[str] = None  # .safetensors/.pth file, or a run folder of this framework
    pretrained: bool = False  # hub weights, where the machine can reach the hub
    small_input_stem: bool = False
    img_size: Optional[int] = None  # resize the student's batch to this; None keeps it
    mean: Optional[List[float]] = None  # the teacher's normalisation; None = the data's
    std: Optional[List[float]] = None


@dataclass
class _DistillCommon:
    type: str = "none"  # a registered method: `distill methods` lists them (distill/methods/)
    alpha: float = 0.5  # weight of the teacher's term; (1 - alpha) on the label term
    tau: float = 1.0  # temperature of the methods that soften logits (soft, kd, dkd, dist)
    standardize: bool = False  # z-score both sides' logits per sample before tau (Sun et al. 2024): soft, kd, dkd, dist
    cache: bool = _key(False, may_differ=True)  # record the teacher's logits once per view, replay them later
    cache_topk: Optional[int] = None  # store only the top-k classes per view (fp16 + int16); None/0 = every logit


# The common keys, then each method's own (`Method.keys`, in registration order): a new method's keys
# arrive with its file.
DistillConfig = dataclasses.make_dataclass(
    "DistillConfig", [(name, Optional[spec.type] if spec.default is None else spec.type, field(default=spec.default))
                      for method in METHODS.values() for name, spec in method.keys.items()],
    bases=(_DistillCommon,), namespace={"__doc__": "distill.*: the method, its weights, the logit cache.",
                                        "__module__": __name__})


@dataclass
class TrainConfig:
    epochs: int = _key(200, may_differ=True)
    lr: float = 3e-4  # at a global batch of lr_base_batch; scaled linearly (DeiT rule)
    lr_base_batch: int = 512
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: Optional[float] = None  # max global grad norm; None = no clipping
    grad_accum_steps: int = 1
    mixed_precision: Optional[str] = "auto"  # no | fp16 | bf16 | auto (what the device computes natively); None = Accelerate's config
    ema: bool = False
    ema_decay: float = 0.9998
    resume: str = _key("", may_differ=True)  # "" = new run, "auto" = latest checkpoint of this run name, or a path
    eval_every: int = _key(1, may_differ=True)  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_every: int = _key(1, may_differ=True)  # epochs between checkpoints (and after the last)
    checkpoint_every_steps: int = _key(0, may_differ=True)  # also mid-epoch, every N steps; 0 = off
    keep_checkpoints: int = _key(2, may_differ=True)
    log_every: int = _key(50, may_differ=True)  # steps between progress updates (each one syncs with the device)
    on_nonfinite: str = "stop"  # stop | skip (skipping syncs with the device every step)
    compile: bool = False
    channels_last: bool = False  # convolution weights in NHWC, as timm's --channels-last (ResNet-10t on a CPU: 1.2x)
    cuda_graphs: bool = False  # capture the whole step in a CUDA graph (1 GPU, in-memory data)
    deterministic: bool = False
    dist_timeout_s: float = _key(600.0, may_differ=True)  # a collective waits this long for a lost process before the job ends
    # experiment trackers (Accelerate's): one name or a list, [] for none; `distill/runs/trackers.py` lists them
    log_with: Any = _key(["tensorboard"], may_differ=True)


@dataclass
class Config:
    name: Optional[str] = None  # run folder name; defaults to the recipe file's stem
    seed: int = 0
    output_dir: str = _key("runs", may_differ=True)  # a run folder may be moved, then resumed
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "data.name": tuple(SOURCES),
    "data.crop": ("pad", "rrc"),
    "data.interpolation": ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random"),
    "data.remode": ("pixel", "rand", "const"),
    "data.augment_on": ("workers", "device"),
    "data.decode_on": ("auto", "workers", "device"),
    "data.mixup_mode": ("batch", "pair", "elem"),
    "distill.type": tuple(METHODS),
    **{f"distill.{k}": spec.choices for m in METHODS.values() for k, spec in m.keys.items() if spec.choices},
    "train.mixed_precision": (None, "no", "fp16", "bf16", "auto"),
    "train.on_nonfinite": ("stop", "skip"),
}
POSITIVE = ("data.img_size", "data.batch_size", "data.eval_batch_size", "train.epochs",
            "train.lr", "train.lr_base_batch", "train.grad_accum_steps", "train.keep_checkpoints",
            "train.eval_every", "train.checkpoint_every",
            "train.log_every", "train.dist_timeout_s", "distill.tau")
NON_NEGATIVE = ("data.crop_padding", "data.mixup_alpha", "data.cutmix_alpha", "data.num_workers", "data.color_jitter",
                "train.min_lr", "train.warmup_epochs", "train.weight_decay",
                "train.checkpoint_every_steps",
                *(f"distill.{k}" for m in METHODS.values() for k, spec in m.keys.items() if spec.min == 0))
UNIT_INTERVAL = ("distill.alpha", "data.label_smoothing", "data.mixup_prob", "train.ema_decay", "data.reprob",
                 "data.mixup_switch_prob", "data.crop_pct")


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """Read one recipe and the `base:` chain under it (a path or a list of paths, relative to the
    recipe), the recipe's own keys winning."""
    if path in seen:
        raise ConfigError(f"recipe {path}: `base:` chain loops back to itself")
    if path.is_dir():
        inside = sorted(p for p in path.glob("*.yaml") if not p.name.startswith("_"))  # `_*.yaml`: bases
        example = inside[0] if inside else "recipes/fashion_mnist/plain_tiny.yaml"
        raise ConfigError(f"recipe {path} is a directory; pass a YAML file, such as {example}")
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
    _check_sections(raw, f"recipe {path}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = base if isinstance(base, list) else [base]  # several bases merge in order
    parents = [_read_yaml((path.parent / str(b)).resolve(), seen + (path,)) for b in bases]
    return OmegaConf.to_container(OmegaConf.merge(*parents, raw))


def _check_sections(raw: dict, source: str) -> None:
    """A section (`train:`, `data:`, ...) holds keys: `train: 5` is refused by name, not as OmegaConf's
    merge error (which has no message)."""
    for f in dataclasses.fields(Config):
        value = raw.get(f.name)
        if dataclasses.is_dataclass(f.default_factory) and f.name in raw and not isinstance(value, dict):
            raise ConfigError(f"{source}: `{f.name}: {value}` is not a section of keys; give {f.name}.<key> values "
                              f"(in YAML, indented under `{f.name}:`), or remove it; `distill config` lists the keys")


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _check_finite(cfg: Config) -> None:
    """Every float (and list of floats) is finite: nan slips past `<= 0`, inf past `> 0`."""
    for key, _ in _fields(Config):
        value = _get(cfg, key)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            what = "finite numbers" if isinstance(value, list) else "a finite number"
            raise ConfigError(f"{key}={value} must be {what} (the default is {_get(Config(), key)})")


def _check_optimization(cfg: Config) -> None:
    """Keys whose bad values torch would take (or refuse with a traceback) a few lines later."""
    betas = cfg.train.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"train.betas={list(betas)} must be two numbers in [0, 1) (AdamW's decay rates, "
                          "e.g. [0.9, 0.999])")
    if cfg.train.clip_grad is not None and cfg.train.clip_grad <= 0:  # a negative norm reverses the gradients
        raise ConfigError(f"train.clip_grad={cfg.train.clip_grad} must be > 0 (the largest gradient norm), "
                          "or null for no clipping")
    if not 0.0 <= cfg.student.drop_path_rate < 1.0:
        raise ConfigError(f"student.drop_path_rate={cfg.student.drop_path_rate} must be in [0, 1) "
                          "(the chance that a block is dropped; e.g. 0.1)")


def _check_values(cfg: Config) -> None:
    def get(key):
        return _get(cfg, key)

    _check_finite(cfg)
    _check_optimization(cfg)
    for key, allowed in CHOICES.items():
        if get(key) not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"{key}={get(key)!r} is not one of: {shown}")
    for key in POSITIVE:
        if get(key) <= 0:
            raise ConfigError(f"{key}={get(key)} must be > 0")
    for key in NON_NEGATIVE:
        if get(key) is not None and get(key) < 0:
            raise ConfigError(f"{key}={get(key)} must be >= 0")
    for key in UNIT_INTERVAL:
        if not 0.0 <= get(key) <= 1.0:
            raise ConfigError(f"{key}={get(key)} must be in [0, 1]")
    for key in ("data.train_subset", "data.test_subset", "teacher.img_size", "student.patch_size",
                "student.embed_dim", "student.depth", "student.num_heads"):
        if get(key) is not None and get(key) <= 0:
            raise ConfigError(f"{key}={get(key)} must be > 0 (or null for none)")
    if cfg.distill.cache_topk is not None and cfg.distill.cache_topk < 0:
        raise ConfigError(f"distill.cache_topk={cfg.distill.cache_topk} must be >= 0 (0 or null: dense storage)")
    check_data(cfg.data)
    METHODS[cfg.distill.type].check(cfg)  # the method's own rules: teacher, token, cache, its keys
    mixing = cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0 or cfg.data.cutmix_minmax is not None
    if mixing and cfg.data.batch_size % 2:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be even under Mixup/CutMix "
                          "(timm pairs each sample with the batch reversed)")
    if cfg.train.resume not in ("", "auto") and not os.path.exists(cfg.train.resume):
        raise ConfigError(f"train.resume={cfg.train.resume}: no such checkpoint; use 'auto' or a checkpoint folder")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name={cfg.name!r} must be a plain folder name (no '/')")


def _tracker_names(value) -> List[str]:
    """`train.log_with` as a list of registered tracker names: one name, a list, or null or [] for none."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    bad = [n for n in names if not isinstance(n, str) or n not in TRACKERS] if isinstance(names, list) else [value]
    if bad:
        raise ConfigError(f"train.log_with={bad[0]!r} is not a tracker; give one of {', '.join(TRACKERS)}, "
                          "or a list (train.log_with=[tensorboard,mlflow])")
    return list(dict.fromkeys(names))  # each once, in the order given


def load_config(recipe: Optional[str], overrides: List[str] = ()) -> Config:
    """Resolve a recipe file (or the defaults, if None) and `key=value` overrides."""
    raw = _read_yaml(Path(recipe).resolve()) if recipe else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=2)")
    try:
        given = OmegaConf.from_dotlist(list(overrides))
        _check_sections(OmegaConf.to_container(given), "override")
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw, given)
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = (str(getattr(e, "msg", None) or e).splitlines() or [type(e).__name__])[0]
        hint = "; see `distill config` for the valid keys" if "not in" in msg else ""
        raise ConfigError(f"{key}: {msg}{hint}") from None
    if cfg.name is None:
        cfg.name = Path(recipe).stem if recipe else "run"
    if cfg.data.aug_seed is None:  # resolved once: every part of the run, and config.yaml, read one number
        cfg.data.aug_seed = cfg.seed
    if cfg.train.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false: Accelerate's "no"
        cfg.train.mixed_precision = "no"
    cfg.train.log_with = _tracker_names(cfg.train.log_with)
    _check_values(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_dict(d: dict, prefix: str = "") -> dict:
    """The leaves of a nested mapping under dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat_dict(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def flat_config(cfg: Config) -> dict:
    """The resolved config under dotted keys (`train.lr`), as the trackers record it."""
    return flat_dict(OmegaConf.to_container(OmegaConf.structured(cfg)))


def _fields(obj, prefix: str = ""):
    """(dotted key, dataclass field) of every leaf key of a config class, in order."""
    for f in dataclasses.fields(obj):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):  # a section
            yield from _fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def view_keys(cfg: DataConfig) -> Dict[str, dict]:
    """The data keys that decide the training views, by their group in the logit cache's key
    ({"data": {...}, "views": {...}}; the groups only keep the hash of caches written before)."""
    groups: Dict[str, dict] = {}
    for f in dataclasses.fields(DataConfig):
        if VIEWS in f.metadata:
            groups.setdefault(f.metadata[VIEWS], {})[f.name] = getattr(cfg, f.name)
    return groups


def may_differ_on_resume() -> set:
    """Dotted keys a resumed run may change (`train.epochs`, `data.root`, ...)."""
    return {key for key, f in _fields(Config) if f.metadata.get(MAY_DIFFER)}
