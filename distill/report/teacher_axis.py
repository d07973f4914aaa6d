"""The teacher as an axis of a scaling study (`scaling.teacher_axis`, docs/ladder.md).

A distillation method (`method`) is run from each teacher of `teachers` (variants of the study's
`runs:`, each with the overrides its students need, e.g. `teacher.model=`) at each size of `sizes`
(default: the method's fitted sizes), at that size's largest budget, for every seed. The method's own
teacher is its ladder run there: no second copy. At the held-out size they are held-out runs: they
start after the prediction is written. The report plots student top-1 error against teacher
error per size and says, per size and for every pair of teachers, whether the stronger teacher's
students scored lower, paired by seed with a 95% t interval (Busbridge et al. 2025's capacity gap).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List

from distill.errors import ConfigError
from distill.report.stats import mean, paired_diff_ci, std
from distill.runs import durable, records


@dataclass
class TeacherAxis:
    method: str = ""  # the distillation method of `scaling.methods` whose runs take each teacher
    teachers: Dict[str, List[str]] = field(default_factory=dict)  # teacher variant -> overrides its students need
    sizes: List[str] = field(default_factory=list)  # []: the method's fitted sizes; the held-out one runs after the prediction


def axis_variant(cell: str, teacher: str) -> str:
    """A teacher-axis cell: the method's ladder variant, taught by `teacher`."""
    return f"{cell}_by_{teacher}"


def expand(study, path: Path) -> Dict[str, str]:
    """Add the axis's variants after the fitted sizes' ladder runs; returns {variant: size}. Each is the
    method's variant of the size at its largest budget, with another teacher and that teacher's overrides."""
    sc, axis = study.scaling, study.scaling.teacher_axis
    own = sc.methods.get(axis.method)
    if own is None or own.teacher is None:
        raise ConfigError(f"study {path}: scaling.teacher_axis.method={axis.method!r} is not a method of scaling.methods "
                          "with a teacher")
    sizes = axis.sizes or [s for s in (own.sizes or sc.sizes) if s != sc.holdout]
    bad = [s for s in sizes if s not in (own.sizes or sc.sizes)]
    if bad or len(axis.teachers) < 2:
        raise ConfigError(f"study {path}: scaling.teacher_axis needs 2 or more teachers and sizes its method runs at "
                          f"({', '.join(own.sizes or sc.sizes)}); got teachers {list(axis.teachers)}, sizes {sizes}")
    added = {}
    for size in sizes:
        mine = [v for v in study.runs if v.startswith(f"{axis.method}_{size}_e")]
        cell = max(mine, key=lambda v: int(v.rsplit("_e", 1)[1]))  # the largest budget: a long run, no fork
        for teacher, extra in axis.teachers.items():
            if teacher != own.teacher:
                run = study.runs[cell]
                study.runs[axis_variant(cell, teacher)] = replace(run, teacher=teacher, fork=None,
                                                                  overrides=[*run.overrides, *extra])
                added[axis_variant(cell, teacher)] = size
        sc.axis_cells[size] = cell
    sc.axis_sizes = added
    return added


def _top1(folder: Path, run: str):
    path = Path(folder) / run / records.SUMMARY
    return json.loads(path.read_text())["final_top1"] if path.exists() else None


def cells(sc, folder: Path, seeds: List[int]) -> List[dict]:
    """Per (size, teacher): the teacher's top-1 (its first seed's run) and its students' top-1 by seed."""
    axis, own = sc.teacher_axis, sc.methods[sc.teacher_axis.method].teacher
    out = []
    for size, cell in sc.axis_cells.items():
        for teacher in axis.teachers:
            variant = cell if teacher == own else axis_variant(cell, teacher)
            teacher_top1 = next((t for s in seeds if (t := _top1(folder, f"{teacher}_s{s}")) is not None), None)
            students = {s: t for s in seeds if (t := _top1(folder, f"{variant}_s{s}")) is not None}
            out.append({"size": size, "teacher": teacher, "variant": variant, "teacher_top1": teacher_top1,
                        "student_top1": students})
    return out


def comparisons(rows: List[dict]) -> List[dict]:
    """Per size, every pair of teachers (the weaker first, by teacher top-1): the stronger one's students'
    top-1 minus the weaker one's, paired by seed, with its 95% t half-width; `hurt` is "yes" where the
    whole interval is below 0, "not shown" where the mean is below 0 but the interval holds 0, else "no"."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = sorted((r for r in rows if r["size"] == size and r["teacher_top1"] is not None),
                      key=lambda r: r["teacher_top1"])
        for i, weak in enumerate(mine):
            for strong in mine[i + 1:]:
                seeds = sorted(set(weak["student_top1"]) & set(strong["student_top1"]))
                if not seeds:
                    continue
                diff, half = paired_diff_ci([strong["student_top1"][s] for s in seeds],
                                            [weak["student_top1"][s] for s in seeds])
                hurt = "yes" if diff + half < 0 else "not shown" if diff < 0 else "no"
                out.append({"size": size, "weaker": weak["teacher"], "stronger": strong["teacher"], "seeds": seeds,
                            "diff": diff, "half_width": half, "hurt": hurt})
    return out


def figure(rows: List[dict], out: Path) -> Path:
    """Student top-1 error (mean over seeds, +-1 std) against teacher error, one line per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for size in dict.fromkeys(r["size"] for r in rows):
        pts = sorted(((100 - r["teacher_top1"], [100 - t for t in r["student_top1"].values()]) for r in rows
                      if r["size"] == size and r["teacher_top1"] is not None and r["student_top1"]))
        if pts:
            ax.errorbar([x for x, _ in pts], [mean(y) for _, y in pts], yerr=[std(y) for _, y in pts], marker="o",
                        capsize=4, label=size)
    ax.set(xlabel="teacher test error (%)", ylabel="student test error (%)",
           title="Student error against teacher error (mean over seeds, ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out) / "teacher_axis.png", dpi=110)
    plt.close(fig)
    return Path(out) / "teacher_axis.png"


def write(sc, folder: Path, seeds: List[int], out: Path) -> Path:
    """teacher_axis.json, teacher_axis.png and a section of report.md in `out`; returns the JSON's path."""
    rows = cells(sc, folder, seeds)
    pairs = comparisons(rows)
    path = Path(out) / "teacher_axis.json"
    durable.write_text(path, json.dumps({"cells": rows, "comparisons": pairs}, indent=2) + "\n", str(path))
    png = figure(rows, out)
    lines = ["", "## The teacher axis", "", f"![teacher axis]({png.name})", "",
             "| size | weaker teacher | stronger teacher | stronger - weaker (student top-1, paired 95% t) | seeds "
             "| a stronger teacher hurt |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['size']} | {c['weaker']} | {c['stronger']} | {c['diff']:+.2f} ± {c['half_width']:.2f} | "
              f"{len(c['seeds'])} | {c['hurt']} |" for c in pairs]
    with open(Path(out) / "report.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    return path
