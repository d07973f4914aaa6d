"""Unique images as an axis of a scaling study (`scaling.data_axis`, docs/ladder.md).

Repeated epochs of one subset are not Chinchilla's D. Some cells are run again with another number of
unique training images (`data.train_subset`), at the same budgets: under `budgets` (training FLOPs)
a larger subset trains fewer epochs of more images, so a cell of 20,000 images seen once and one of
5,000 seen four times meet at the same compute. Each such method is its own label in the fit,
`<method>-u<images>` (e.g. `plain-u20000`), compared with its method on the study's own subset in
the same (params, images) cells, paired by seed (the fit's gains): what unique images buy over
repetition at equal compute. Every row of runs.jsonl carries `unique_images`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List

from distill.errors import ConfigError


@dataclass
class DataAxis:
    train_subset: int = 0  # the unique training images of the extra cells
    sizes: List[str] = field(default_factory=list)  # fitted sizes; []: every fitted size
    methods: List[str] = field(default_factory=list)  # methods of scaling.methods; []: every one


def label(method: str, images: int) -> str:
    """The fit's method label of `method` trained on `images` unique images."""
    return f"{method}-u{images}"


def expand(study, path: Path, overrides=()) -> Dict[str, str]:
    """Add the axis's variants after the ladder's; returns {variant: size}. Under `budgets` each size's
    epochs are planned again for the subset (`ladder.size_rungs`), as long runs and forks."""
    from distill.report import ladder
    from distill.report.scaling import ladder_variant

    sc, axis = study.scaling, study.scaling.data_axis
    methods = axis.methods or list(sc.methods)
    sizes = axis.sizes or [s for s in sc.sizes if s != sc.holdout]
    if axis.train_subset <= 0 or any(m not in sc.methods for m in methods) or \
            any(s not in sc.sizes or s == sc.holdout for s in sizes):
        raise ConfigError(f"study {path}: scaling.data_axis needs train_subset > 0 (got {axis.train_subset}), methods "
                          f"of scaling.methods (got {methods}) and fitted sizes, not the held-out {sc.holdout} (got "
                          f"{sizes})")
    runs = {label(m, axis.train_subset): sc.methods[m] for m in methods}
    sc.data_methods = {name: (m, axis.train_subset) for name, m in zip(runs, methods)}
    extra, added = [f"data.train_subset={axis.train_subset}"], {}
    for size in sizes:
        before = set(study.runs)
        if sc.budgets:
            rungs = ladder.size_rungs(study, path, overrides, size, extra)
            ladder.add_cells(study, runs, size, rungs, extra)
            sc.rungs[f"{size}-u{axis.train_subset}"] = rungs
            sc.epochs = sorted({*sc.epochs, *(r.epochs for r in rungs)})
        else:
            for name, run in runs.items():
                for e in sc.epochs if run.sizes is None or size in run.sizes else []:
                    study.runs[ladder_variant(name, size, e)] = replace(
                        run, overrides=[*run.overrides, *sc.sizes[size], f"train.epochs={e}", *extra])
        added.update({v: size for v in study.runs if v not in before})
    return added
