"""The loader of the config: a recipe and its overrides into a validated `Config`, with what only the
registries know (the methods and their keys, the data sources, the trackers).

`distill/config.py` is a leaf that knows none of them; this module owns both sides, so neither the
registries nor the config imports the other. `distill.config.precheck` refuses what needs no registry
before this module (and torch with it) is imported.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Dict, List, Optional, Tuple

from distill import config as leaf
from distill.config import Config, ConfigError
from distill.data.checks import check_data
from distill.data.sources import SOURCES
from distill.methods import METHODS
from distill.methods.plugins import load_plugins
from distill.runs.trackers import TRACKERS


def _method_field(spec):
    """A method's `Key` as a dataclass field with the same metadata the leaf's keys carry."""
    meta = {k: v for k, v in (("choices", spec.choices), ("min", spec.min)) if v is not None}
    kind = spec.type if spec.default is not None else Optional[spec.type]
    return kind, field(default=spec.default, metadata=meta)


def schema() -> Tuple[type, type]:
    """(DistillConfig, Config) from the methods registered now: the common `distill.*` keys, then each
    method's own (`Method.keys`, in registration order), so a new method's keys, a plugin's included,
    arrive with its file. An instance of either is an instance of the leaf's class."""
    own = [(name, *_method_field(spec)) for method in METHODS.values() for name, spec in method.keys.items()]
    names = tuple(name for name, *_ in own)
    if names not in _SCHEMAS:
        section = dataclasses.make_dataclass("DistillConfig", own, bases=(leaf.DistillConfig,), namespace={
            "__doc__": leaf.DistillConfig.__doc__, "__module__": __name__})
        run = dataclasses.make_dataclass("Config", [("distill", section, field(default_factory=section))],
                                         bases=(Config,), namespace={"__doc__": Config.__doc__, "__module__": __name__})
        _SCHEMAS[names] = section, run
    return _SCHEMAS[names]


_SCHEMAS: Dict[tuple, Tuple[type, type]] = {}
DistillConfig, RunConfig = schema()  # the built-in methods' (tests build a DistillConfig directly)


def _tracker_names(value) -> List[str]:
    """`train.log_with` as a list of registered tracker names: one name, a list, or null or [] for none."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    bad = [n for n in names if not isinstance(n, str) or n not in TRACKERS] if isinstance(names, list) else [value]
    if bad:
        raise ConfigError(f"train.log_with={bad[0]!r} is not a tracker; give one of {', '.join(TRACKERS)}, "
                          "or a list (train.log_with=[tensorboard,mlflow])")
    return list(dict.fromkeys(names))  # each once, in the order given


def resolve_augment_on(d) -> str:
    """`data.augment_on=auto`: the device path on CUDA where it can run the recipe's augmentation
    (timm's crop, RandAugment and erasing, `crop=rrc`), else the workers. Resolved once, at load, so
    config.yaml and the logit cache's key hold what ran."""
    if d.augment_on != "auto":
        return d.augment_on
    import torch  # already imported by the registries; named here for the reader

    if not torch.cuda.is_available() or d.crop != "rrc":
        return "workers"
    probe = dataclasses.replace(d, augment_on="device")
    try:
        check_data(probe)
    except ConfigError:
        return "workers"
    return "device"


def load_config(recipe: Optional[str], overrides: List[str] = ()) -> Config:
    """Resolve a recipe file (or the defaults, if None) and `key=value` overrides into a validated config."""
    load_plugins(leaf.read_plugins(recipe, overrides))  # their methods and keys join the registry first
    cfg = leaf.read_config(recipe, overrides, schema()[1])
    cfg.train.log_with = _tracker_names(cfg.train.log_with)
    choices = {"data.name": tuple(SOURCES), "distill.type": tuple(METHODS)}
    leaf.check_config(cfg, choices)
    cfg.data.augment_on = resolve_augment_on(cfg.data)
    check_data(cfg.data)
    METHODS[cfg.distill.type].check(cfg)  # the method's own rules: teacher, token, cache, its keys
    return cfg
