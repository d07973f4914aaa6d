"""Typed configuration: dataclass defaults <- recipe YAML (+ `base:` chain) <- CLI `key=value`.

A recipe holds only what differs from the defaults below. The merged result is validated
and handed out as plain dataclasses; each component receives the sub-config it needs.

This module is a leaf: it imports no torch, timm or package of this project but `errors`, so that
`distill --help` and a one-line refusal are instant. Each key's choices and bounds are field
metadata (`choices=`, `min=`, `gt=`, `max=`, the shape of a method's `Key`), read by one validator,
`check_fields`. What only a registry knows (the methods and their keys, the data sources, the
trackers) is added by the loader, `distill/recipe.py`, which owns both sides.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import ConfigError

# Field metadata, read by the code that needs the list, so that no second list can drift:
VIEWS = "views"  # the key decides the training views (part of the logit cache's key; value: its group there)
MAY_DIFFER = "may_differ"  # a resumed run may change the key (the run's identity is everything else)
# Bounds and choices, read by `check_fields`: choices=(...), min= (>=), gt= (>), max= (<=), lt= (<); None passes the
# bounds where the default is None (an unset optional key).
UNIT = dict(min=0.0, max=1.0)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")


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
    train_subset: Optional[int] = _key(None, views="data", gt=0)  # first N images of a fixed permutation of the train split
    test_subset: Optional[int] = _key(None, gt=0)
    img_size: int = _key(32, views="data", gt=0)  # smaller images are zero-padded (centred), larger ones resized
    batch_size: int = _key(128, views="data", gt=0)  # per process; the global batch is batch_size x world_size
    eval_batch_size: int = _key(512, gt=0)
    crop_padding: int = _key(4, views="data", min=0)  # random crop of img_size from the image padded by this much
    hflip: bool = _key(True, views="data")
    mixup_alpha: float = _key(0.0, views="data", min=0)
    cutmix_alpha: float = _key(0.0, views="data", min=0)
    mixup_prob: float = _key(1.0, views="data", **UNIT)
    label_smoothing: float = _key(0.1, views="data", **UNIT)
    aug_seed: Optional[int] = None  # sample order and augmentation; None = `seed`, resolved at load (set it to share a logit cache)
    device_resident: bool = _key(True, may_differ=True)  # hold in-memory sets whole on the training device
    # DataLoader workers, for sets decoded per item (imagefolder, streamed hf, crop=rrc); None = min(4, usable cores)
    num_workers: Optional[int] = _key(None, may_differ=True, min=0)
    # --- real images; names mirror timm's train.py flags
    in_memory: Optional[bool] = _key(None, views="views")  # hf/imagefolder decoded whole up front; None = auto (small hf sets, crop=pad)
    mean: Optional[List[float]] = _key(None, views="views")  # per channel in [0, 1]; None = the dataset's (hf: from ~1000 train images)
    std: Optional[List[float]] = _key(None, views="views")
    crop: str = _key("pad", views="views", choices=("pad", "rrc"))  # pad: pad-crop + flip on the device | rrc: timm's per-sample transforms in workers
    scale: List[float] = _key([0.08, 1.0], views="views")  # rrc: area range of RandomResizedCrop
    ratio: List[float] = _key([3 / 4, 4 / 3], views="views")  # rrc: aspect-ratio range
    interpolation: str = _key("bicubic", views="views", choices=INTERPOLATIONS)  # rrc: bilinear | bicubic | nearest | lanczos | ... | random (as DeiT)
    auto_augment: Optional[str] = _key(None, views="views")  # rrc: timm string (rand-m9-mstd0.5-inc1, augmix, v0, 3a) or trivialaugment
    color_jitter: float = _key(0.4, views="views", min=0)  # rrc: brightness/contrast/saturation factor; timm drops it under auto_augment
    reprob: float = _key(0.0, views="views", **UNIT)  # rrc: random-erasing probability (DeiT: 0.25)
    remode: str = _key("pixel", views="views", choices=("pixel", "rand", "const"))  # rrc: random-erasing fill: pixel | rand | const
    recount: int = _key(1, views="views", min=1)  # rrc: random-erasing regions per image
    # rrc: where RandAugment, normalisation and erasing run: per sample in the workers (timm's views pixel
    # for pixel) | on the device, batch-wise, from the same per-view draws (distill/data/device/) | auto:
    # the device on CUDA where it can run the recipe's augmentation, else the workers (resolved at load)
    augment_on: str = _key("auto", views="views", choices=("auto", "workers", "device"))
    # augment_on=device: who decodes JPEGs: the workers | the device (nvJPEG on a GPU) | auto: the device on CUDA
    decode_on: str = _key("auto", views="views", choices=("auto", "workers", "device"))
    crop_pct: float = _key(0.875, gt=0, max=1.0)  # rrc evaluation: resize to img_size / crop_pct, centre-crop img_size
    aug_repeats: int = _key(1, views="views", min=1)  # repeated augmentation (DeiT: 3): each image r times per epoch, epoch length kept
    mixup_switch_prob: float = _key(0.5, views="views", **UNIT)  # chance of CutMix over Mixup when both are on
    mixup_mode: str = _key("batch", views="views", choices=("batch", "pair", "elem"))  # batch | pair | elem: one draw per batch, per pair, per sample
    cutmix_minmax: Optional[List[float]] = _key(None, views="views")  # CutMix box side as fractions [min, max]; forces CutMix

    @property
    def mixing(self) -> bool:
        """Mixup or CutMix is on: the targets are soft, and samples are paired."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.cutmix_minmax is not None


@dataclass
class StudentConfig:
    """The model being trained: `distill_vit_*` or any timm model, built for data.img_size where it can."""

    model: str = "distill_vit_tiny"
    drop_path_rate: float = _key(0.0, min=0, lt=1.0)  # the chance that a block is dropped
    distilled: bool = False  # add a DeiT distillation token and head
    patch_size: Optional[int] = _key(None, gt=0)  # override the size's patch size (any model that takes a patch_size)
    embed_dim: Optional[int] = _key(None, gt=0)  # override the size's width (distill_vit_*: a scaling ladder's rungs)
    depth: Optional[int] = _key(None, gt=0)  # override the size's number of blocks
    num_heads: Optional[int] = _key(None, gt=0)  # override the size's attention heads (must divide embed_dim)
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
    img_size: Optional[int] = _key(None, gt=0)  # resize the student's batch to this; None keeps it
    mean: Optional[List[float]] = None  # the teacher's normalisation; None = the data's
    std: Optional[List[float]] = None


@dataclass
class DistillConfig:
    """distill.*: the method, its weights, the logit cache. The loader (`distill/recipe.py`) extends it
    with each registered method's own keys (`Method.keys`)."""

    type: str = "none"  # a registered method: `distill methods` lists them (distill/methods/)
    alpha: float = _key(0.5, **UNIT)  # weight of the teacher's term; (1 - alpha) on the label term
    tau: float = _key(1.0, gt=0)  # temperature of the methods that soften logits (soft, kd, dkd, dist)
    standardize: bool = False  # z-score both sides' logits per sample before tau (Sun et al. 2024): soft, kd, dkd, dist
    cache: bool = _key(False, may_differ=True)  # record the teacher's logits once per view, replay them later
    cache_topk: Optional[int] = _key(None, min=0)  # store only the top-k classes per view (fp16 + int16); None/0 = every logit


@dataclass
class TrainConfig:
    epochs: int = _key(200, may_differ=True, gt=0)
    lr: float = _key(3e-4, gt=0)  # at a global batch of lr_base_batch; scaled linearly (DeiT rule)
    lr_base_batch: int = _key(512, gt=0)
    min_lr: float = _key(1e-6, min=0)
    warmup_epochs: float = _key(5.0, min=0)
    schedule: str = _key("cosine", choices=("cosine", "wsd"))  # wsd: warm-up, stable, cooldown (distill/schedule.py)
    cooldown: float = _key(0.2, gt=0, max=1.0)  # wsd: the fraction of the run spent in the cooldown
    cooldown_shape: str = _key("1-sqrt", choices=("1-sqrt", "linear"))  # wsd: how the cooldown decays
    weight_decay: float = _key(0.05, min=0)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: Optional[float] = _key(None, gt=0)  # max global grad norm; None = no clipping
    grad_accum_steps: int = _key(1, gt=0)
    mixed_precision: Optional[str] = _key("auto", choices=(None, "no", "fp16", "bf16", "auto"))  # auto: native on the device; None: Accelerate's config
    ema: bool = False
    ema_decay: float = _key(0.9998, **UNIT)
    resume: str = _key("", may_differ=True)  # "" = new run, "auto" = latest checkpoint of this run name, or a path
    eval_every: int = _key(1, may_differ=True, gt=0)  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_every: int = _key(1, may_differ=True, gt=0)  # epochs between checkpoints (and after the last)
    checkpoint_every_steps: int = _key(0, may_differ=True, min=0)  # also mid-epoch, every N steps; 0 = off
    keep_checkpoints: int = _key(2, may_differ=True, gt=0)
    log_every: int = _key(50, may_differ=True, gt=0)  # steps between progress updates (each one syncs with the device)
    on_nonfinite: str = _key("stop", choices=("stop", "skip"))  # stop | skip (skipping syncs with the device every step)
    compile: bool = False
    channels_last: bool = False  # convolution weights in NHWC, as timm's --channels-last (faster CNNs; docs/speed.md)
    cuda_graphs: bool = False  # capture the whole step in a CUDA graph (1 GPU, in-memory data)
    deterministic: bool = False
    dist_timeout_s: float = _key(600.0, may_differ=True, gt=0)  # a collective waits this long for a lost process before the job ends
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
    plugins: List[str] = field(default_factory=list)  # methods from outside: modules or .py files (docs/methods.md)


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
    if isinstance(raw.get("plugins"), list):  # a plugin file is relative to the recipe that names it, as `base:` is
        raw["plugins"] = [str((path.parent / p).resolve()) if isinstance(p, str) and is_plugin_path(p) else p
                          for p in raw["plugins"]]
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = base if isinstance(base, list) else [base]  # several bases merge in order
    parents = [_read_yaml((path.parent / str(b)).resolve(), seen + (path,)) for b in bases]
    return OmegaConf.to_container(OmegaConf.merge(*parents, raw))


def is_plugin_path(spec: str) -> bool:
    """A plugin named by its file (`my_method.py`, `path/to/it`), not by a module (`my_pkg.my_method`)."""
    return spec.endswith(".py") or "/" in spec


def _given(overrides: List[str]):
    """The overrides as OmegaConf's dotlist, plugin files resolved against the working directory."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=2)")
    given = OmegaConf.from_dotlist(list(overrides))
    if isinstance(given.get("plugins"), ListConfig):  # on the command line: relative to the working directory
        given.plugins = [str(Path(p).resolve()) if is_plugin_path(str(p)) else p for p in given.plugins]
    return given


def read_plugins(recipe: Optional[str], overrides: List[str] = ()) -> List[str]:
    """The `plugins:` a recipe and its overrides name (the loader imports them before the schema is made)."""
    raw = _read_yaml(Path(recipe).resolve()) if recipe else {}
    try:
        plugins = _given(overrides).get("plugins", raw.get("plugins", []))
    except OmegaConfBaseException:
        return []  # read_config says what is wrong with the overrides
    return [str(p) for p in plugins] if isinstance(plugins, (list, ListConfig)) else []


def _check_sections(raw: dict, source: str) -> None:
    """A section (`train:`, `data:`, ...) holds keys: `train: 5` is refused by name, not as OmegaConf's
    merge error (which has no message)."""
    for f in dataclasses.fields(Config):
        value = raw.get(f.name)
        if dataclasses.is_dataclass(f.default_factory) and f.name in raw and not isinstance(value, dict):
            raise ConfigError(f"{source}: `{f.name}: {value}` is not a section of keys; give {f.name}.<key> values "
                              f"(in YAML, indented under `{f.name}:`), or remove it; `distill config` lists the keys")


def _get(cfg, key: str):
    return functools.reduce(getattr, key.split("."), cfg)


def _check_finite(cfg: Config) -> None:
    """Every float (and list of floats) is finite: nan slips past `<= 0`, inf past `> 0`."""
    for key, _ in _fields(type(cfg)):
        value = _get(cfg, key)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            what = "finite numbers" if isinstance(value, list) else "a finite number"
            raise ConfigError(f"{key}={value} must be {what} (the default is {_get(type(cfg)(), key)})")


def _check_optimization(cfg: Config) -> None:
    """Keys whose bad values torch would take (or refuse with a traceback) a few lines later."""
    betas = cfg.train.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"train.betas={list(betas)} must be two numbers in [0, 1) (AdamW's decay rates, "
                          "e.g. [0.9, 0.999])")


def _bound_error(key: str, value, meta: dict):
    """The one line for a value outside its field's bounds or choices, or None."""
    if "choices" in meta and value not in meta["choices"]:
        shown = ", ".join(str(a) for a in meta["choices"] if a is not None)
        return f"{key}={value!r} is not one of: {shown}"
    if value is None or isinstance(value, (str, bool, list, dict)):
        return None
    lo, gt, hi, lt = meta.get("min"), meta.get("gt"), meta.get("max"), meta.get("lt")
    optional = " (or null for none)" if meta.get("optional") else ""
    if lo is not None and lt is not None and not lo <= value < lt:
        return f"{key}={value} must be in [{lo:g}, {lt:g})"
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"{key}={value} must be in [{lo:g}, {hi:g}]"
    if gt is not None and hi is not None and not gt < value <= hi:
        return f"{key}={value} must be in ({gt:g}, {hi:g}]"
    if gt is not None and not value > gt:
        return f"{key}={value} must be > {gt:g}{optional}"
    if lo is not None and not value >= lo:
        return f"{key}={value} must be >= {lo:g}"
    return None


def check_fields(cfg: Config, choices: Optional[Dict[str, tuple]] = None) -> None:
    """Every key against its field's metadata (`choices`, `min`, `gt`, `max`), and `choices` that only a
    registry knows (`{"data.name": (...)}`, given by the loader): the one validator of single values."""
    choices = choices or {}
    for key, f in _fields(type(cfg)):
        meta = dict(f.metadata)
        if key in choices:
            meta["choices"] = choices[key]
        elif meta.get("choices") is None:
            meta.pop("choices", None)
        meta["optional"] = f.default is None
        message = _bound_error(key, _get(cfg, key), meta)
        if message:
            raise ConfigError(message)


def check_config(cfg: Config, choices: Optional[Dict[str, tuple]] = None) -> None:
    """The checks that need no registry: finite numbers, each field's bounds, and the pairs of keys."""
    _check_finite(cfg)
    _check_optimization(cfg)
    check_fields(cfg, choices)
    if cfg.data.mixing and cfg.data.batch_size % 2:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be even under Mixup/CutMix "
                          "(timm pairs each sample with the batch reversed)")
    if cfg.train.resume not in ("", "auto") and not os.path.exists(cfg.train.resume):
        raise ConfigError(f"train.resume={cfg.train.resume}: no such checkpoint; use 'auto' or a checkpoint folder")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name={cfg.name!r} must be a plain folder name (no '/')")


def read_config(recipe: Optional[str], overrides: List[str] = (), schema: type = None) -> Config:
    """A recipe file (or the defaults, if None) and `key=value` overrides merged into `schema` (a
    `Config` class whose `distill` section holds every method's keys: the loader's; with the leaf's own,
    `precheck` leaves `distill.*` to the loader), the values resolved once. Checks keys and types only."""
    schema = schema or Config
    raw = _read_yaml(Path(recipe).resolve()) if recipe else {}
    try:
        given = _given(overrides)
        _check_sections(OmegaConf.to_container(given), "override")
        if schema is Config:  # no method keys in this schema: the distill section is checked by the loader
            raw = {k: v for k, v in raw.items() if k != "distill"}
            given = OmegaConf.create({k: v for k, v in OmegaConf.to_container(given).items() if k != "distill"})
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw, given)
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
    return cfg


def precheck(recipe: Optional[str], overrides: List[str] = (), schema: type = None,
             choices: Optional[Dict[str, tuple]] = None) -> None:
    """The refusals that need no registry, before torch is imported (`distill.catalog.precheck`)."""
    cfg = read_config(recipe, overrides, schema)
    _check_finite(cfg)
    check_fields(cfg, choices)  # the other registries' choices (data.name, train.log_with) are the loader's


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
