"""Like with like: a distilled variant and the baseline its gain is measured against differ only in
the method's keys.

A method's keys are what its class in `distill/methods/` declares: `distill.type`, its own keys
(`keys`), the common ones it reads (`reads`), and what its kind needs: a teacher (`teacher.*`, and
`distill.cache*` where it can replay one's logits) and, where it trains a distillation token's head
(`token`), `student.distilled`. Any other resolved key that differs (`data.label_smoothing`,
`train.lr`, ...) makes the gain measure that difference too. A study refuses such a pair before any
run starts unless the variant declares the key (`declared_differences:`) or names a baseline that
shares its setting (`baseline:`); the report prints every difference beside the gain, and whether it
was declared.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence

from omegaconf import OmegaConf

from distill.config import flat_config, flat_dict
from distill.recipe import load_config, schema
from distill.errors import ConfigError
from distill.methods import METHODS
from distill.report import lr_sweep

# what names a run rather than sets it; `data.aug_seed` too between two different seeds (it follows `seed`)
IDENTITY = frozenset({"name", "output_dir", "seed", "train.resume"})
# a baseline is looked for among the plain variants that train the same student on the same images
SAME_STUDENT = ("data.name", "data.train_subset", "train.epochs", "student.model", "student.embed_dim",
                "student.depth", "student.num_heads", "student.patch_size")


@lru_cache(maxsize=None)
def method_keys(method: str) -> FrozenSet[str]:
    """The dotted config keys that belong to `distill.type=method`, as its class declares them."""
    m = METHODS[method]
    keys = {"distill.type", *(f"distill.{k}" for k in (*m.keys, *m.reads))}
    if m.needs_teacher:
        keys |= {k for k in _defaults() if k.startswith("teacher.")}
    if m.cache:
        keys.add("distill.cache")
    if m.topk_cache:
        keys.add("distill.cache_topk")
    if m.token:
        keys.add("student.distilled")
    return frozenset(keys)


def _defaults() -> Dict[str, object]:
    """Every key's default, the methods' keys included (those registered now, plugins too): a run
    written before a method existed holds none of its keys, and they are not a difference."""
    return flat_config(schema()[1]())


def differences(variant: dict, base: dict) -> Dict[str, tuple]:
    """{key: (variant's value, baseline's value)} for every key of two flat configs that differs and is
    neither method's key nor a run's identity."""
    ignore = set(IDENTITY) | method_keys(variant.get("distill.type", "none")) | method_keys(base.get("distill.type", "none"))
    if variant.get("seed") != base.get("seed"):
        ignore.add("data.aug_seed")
    keys = [k for k in variant if k not in ignore] + [k for k in base if k not in ignore and k not in variant]
    return {k: (variant.get(k), base.get(k)) for k in keys if variant.get(k) != base.get(k)}


def saved_config(run_dir: Path) -> Optional[dict]:
    """A run folder's config.yaml as a flat dict, keys added since it was written at their defaults;
    None where the folder has none."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    return {**_defaults(), **flat_dict(OmegaConf.to_container(OmegaConf.load(path)))}


def describe(diffs: Dict[str, tuple], declared: Sequence[str] = ()) -> str:
    """One cell of the report: `data.label_smoothing 0.0 vs 0.1 (declared)`, `;`-separated; '-' for none."""
    return "; ".join(f"{k} {a} vs {b} ({'declared' if k in declared else 'NOT declared'})"
                     for k, (a, b) in diffs.items()) or "-"


def study_baselines(study, jobs, path: Path) -> Dict[str, str]:
    """{variant: the plain variant its gain is measured against} for every distilled variant of the
    study that has one; refuses (ConfigError, one line) before any run starts a pair that differs in a
    key outside the method's that the variant does not declare."""
    first = {}
    for job in jobs:
        first.setdefault(job.variant, {})[job.seed] = job
    cfgs = {v: {s: None for s in seeds} for v, seeds in first.items()}

    def cfg(variant: str, seed: Optional[int] = None) -> dict:
        seed = seed if seed in first[variant] else next(iter(first[variant]))
        if cfgs[variant][seed] is None:
            job = first[variant][seed]
            settings = [s for s in job.settings if not s.startswith("train.resume=")]  # a fork's checkpoint: not made yet
            cfgs[variant][seed] = flat_config(load_config(job.recipe, settings))
        return cfgs[variant][seed]

    plains = [v for v in first if cfg(v)["distill.type"] == "none" and not lr_sweep.is_sweep(v)]  # a sweep run is no baseline
    chosen = {}
    for variant, run in study.runs.items():
        if variant not in first or lr_sweep.is_sweep(variant):  # a sweep run measures a rate, not a gain
            continue
        mine, seed = cfg(variant), next(iter(first[variant]))
        for key in run.declared_differences:
            if key not in mine:
                raise ConfigError(f"study {path}: runs.{variant}.declared_differences names {key!r}, which is not a "
                                  "config key; `distill config` lists them")
        if run.baseline is not None:
            if run.baseline not in plains:
                raise ConfigError(f"study {path}: runs.{variant}.baseline={run.baseline!r} is not a plain variant of "
                                  f"the study (distill.type=none: {', '.join(plains) or 'none'})")
            candidates = [run.baseline]
        elif mine["distill.type"] == "none":
            continue
        else:
            candidates = [p for p in plains if all(cfg(p).get(k) == mine.get(k) for k in SAME_STUDENT)]
        if not candidates:
            continue  # no plain run of this student: the report shows no gain for it
        diffs = {p: differences(mine, cfg(p, seed)) for p in candidates}
        clean = [p for p in candidates if set(diffs[p]) <= set(run.declared_differences)]
        if not clean:
            _refuse(path, variant, candidates[0], mine["distill.type"], diffs[candidates[0]],
                    [k for k in diffs[candidates[0]] if k not in run.declared_differences])
        chosen[variant] = clean[0]
    return chosen


def _refuse(path: Path, variant: str, base: str, method: str, diffs: Dict[str, tuple], undeclared: List[str]) -> None:
    keys = ", ".join(f"{k} ({diffs[k][0]} against {diffs[k][1]})" for k in undeclared)
    raise ConfigError(f"study {path}: {variant} differs from its baseline {base} in {keys}, not a key of "
                      f"distill.type={method}, so its gain would measure that too; pair it with a plain variant "
                      f"that shares the setting (runs.{variant}.baseline: <variant>), or declare it "
                      f"(runs.{variant}.declared_differences: [{', '.join(undeclared)}])")
