"""Cooldown forks in a scaling study (docs/ladder.md): budgets in training FLOPs, each (size, method,
seed) trained as one long warmup-stable-decay run to its largest budget, the smaller budgets forked
from its checkpoints at their cooldown starts (`distill/train/fork.py`: a fork is the shorter
run, bit for bit); and the check that a fork scores what a cosine run of its budget does.

A budget B sets a size's length in whole epochs of its training set, round(B / (FLOPs per image x
images per epoch)), at least 1; the FLOPs actually trained are those epochs' (reported beside B). A
budget's fork starts from the long run's last epoch checkpoint at or before its cooldown start (any
stable-phase checkpoint starts the same run; the nearest saves the most), so the long run keeps a
checkpoint every gcd of those epochs. A budget whose cooldown starts inside the first epoch has no
checkpoint to start from and trains from scratch.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Dict, List, Optional

from distill.errors import ConfigError
from distill.runs.checkpoint import checkpoint_step
from distill.schedule import cooldown_start

CHECKPOINT = "step_{:09d}"  # distill/runs/checkpoint.py's folder name, for the global step it holds


@dataclass
class Rung:
    """One budget of one size: how long it trains and where it starts."""
    budget: float  # the training FLOPs asked for
    epochs: int  # the whole epochs that budget rounds to
    flops: float  # the training FLOPs of those epochs
    fork_epoch: int = 0  # the long run's epoch checkpoint it starts from; 0: the long run itself, or scratch
    fork_step: int = 0  # that checkpoint's global step (its folder's number)


def plan_size(budgets: List[float], image_flops: float, epoch_images: int, steps_per_epoch: int,
              grad_accum: int, cooldown: float, where: str) -> List[Rung]:
    """The rungs of one size, the long run (its largest budget) first. `image_flops`: the student's
    training FLOPs per image; `steps_per_epoch`: micro-batches an epoch (a checkpoint's step counts
    them); `where` names the size in errors."""
    per_epoch = image_flops * epoch_images
    rungs = [Rung(b, max(1, round(b / per_epoch)), 0.0) for b in sorted(budgets, reverse=True)]
    for a, b in zip(rungs, rungs[1:]):
        if a.epochs == b.epochs:
            raise ConfigError(f"{where}: budgets {b.budget:.3g} and {a.budget:.3g} FLOPs both round to {a.epochs} "
                              f"epochs ({per_epoch:.3g} FLOPs an epoch); space the budgets further apart")
    updates = steps_per_epoch // grad_accum
    for r in rungs:
        r.flops = r.epochs * per_epoch
        if r is not rungs[0]:
            r.fork_epoch = cooldown_start(r.epochs * updates, cooldown) // updates
            r.fork_step = r.fork_epoch * steps_per_epoch
    return rungs


def long_run_overrides(rungs: List[Rung]) -> List[str]:
    """What the long run needs to keep a checkpoint at every fork's epoch until the forks have run."""
    starts = [r.fork_epoch for r in rungs[1:] if r.fork_epoch > 0]
    every = reduce(math.gcd, starts) if starts else rungs[0].epochs
    keep = -(-rungs[0].epochs // every)  # every checkpoint it saves (the last epoch's too)
    return [f"train.checkpoint_every={every}", f"train.keep_checkpoints={max(keep, 1)}"]


def saved_line(rows: List[dict]) -> str:
    """The dry run's last line: the images the study trains against training every run from scratch."""
    trained = sum(r["images"] for r in rows)
    scratch = sum(r.get("images_scratch", r["images"]) for r in rows)
    forks = sum(1 for r in rows if r.get("images_scratch", r["images"]) != r["images"])
    if not forks:
        return "no forks: every run trains from scratch"
    return (f"{forks} forks: the study trains {trained:,} images, {scratch:,} from scratch would: "
            f"{1 - trained / scratch:.1%} saved")


# ---- a scaling study's budgets in FLOPs (distill/report/study.py calls `expand`) -----------------------
def expand(study, path: Path, overrides=()) -> None:
    """Add a budgets ladder's variants to `study.runs`: per size (the held-out one last) and method, the
    long run to the largest budget, then the smaller budgets as its forks. A size's epochs are set by
    its student's FLOPs under the first method, so every method of a size trains the same epochs."""
    sc = study.scaling
    if sc.epochs:
        raise ConfigError(f"study {path}: scaling gives epochs and budgets; give one (budgets: training FLOPs, "
                          "trained as cooldown forks; see docs/ladder.md)")
    if min(sc.budgets) <= 0:
        raise ConfigError(f"study {path}: scaling.budgets={sc.budgets} must be training FLOPs > 0")
    for size in [s for s in sc.sizes if s != sc.holdout] + [sc.holdout]:
        sc.rungs[size] = size_rungs(study, path, overrides, size)
        add_cells(study, sc.methods, size, sc.rungs[size], [])
    sc.epochs = sorted({r.epochs for rungs in sc.rungs.values() for r in rungs})


def size_rungs(study, path: Path, overrides, size: str, extra=()) -> List[Rung]:
    """The rungs of one size under the first method (with `extra` overrides, e.g. another data.train_subset)."""
    from distill.recipe import load_config
    from distill.report.estimate import size_shape

    sc = study.scaling
    first = next(iter(sc.methods.values()))
    wsd = [*sc.sizes[size], "train.schedule=wsd", *extra]
    cfg = load_config(str(path.parent / first.recipe), [*study.overrides, *first.overrides, *wsd, *overrides])
    shape = size_shape(cfg, sc)
    return plan_size(sc.budgets, shape.image_flops, shape.epoch_images, shape.steps, cfg.train.grad_accum_steps,
                     cfg.train.cooldown, f"study {path}: size {size}" + (f" ({' '.join(extra)})" if extra else ""))


def add_cells(study, methods: Dict, size: str, rungs: List[Rung], extra: List[str]) -> None:
    """Per method label (-> its StudyRun) the long run and its forks of one size, with `extra` overrides."""
    from distill.report.scaling import ladder_variant

    wsd = [*study.scaling.sizes[size], "train.schedule=wsd", *extra]
    for method, run in methods.items():
        if run.sizes is not None and size not in run.sizes:
            continue
        long = ladder_variant(method, size, rungs[0].epochs)
        for r in rungs:
            more = long_run_overrides(rungs) if r is rungs[0] else []
            study.runs[ladder_variant(method, size, r.epochs)] = replace(  # a StudyRun, as the method's
                run, overrides=[*run.overrides, *wsd, f"train.epochs={r.epochs}", *more],
                fork=f"{long}:{r.fork_step}" if r.fork_step else None)


def check_forks(runs: Dict, path: Path) -> None:
    """Refuse a `fork:` that names no earlier variant of the study, or no checkpoint step."""
    names = list(runs)
    for i, (variant, run) in enumerate(runs.items()):
        if run.fork is None:
            continue
        source, _, step = run.fork.rpartition(":")
        if source not in names[:i] or not step.isdigit():
            raise ConfigError(f"study {path}: runs.{variant}.fork={run.fork!r} is not <variant>:<step> of a variant "
                              f"listed before it ({', '.join(names[:i]) or 'none'})")


def resume(fork: Optional[str], folder: Path, seed: int, run_dir: Path) -> tuple:
    """(train.resume, the source run's folder or None) of a study run: `auto`, or a fork's checkpoint
    until the fork has finished (then its source's checkpoints may be deleted)."""
    if not fork:
        return "auto", None
    variant, step = fork.rsplit(":", 1)
    source = folder / f"{variant}_s{seed}"
    if (run_dir / "summary.json").exists():
        return "auto", source
    return str(source / "checkpoints" / CHECKPOINT.format(int(step))), source


def budget_lines(sc) -> List[str]:
    """The dry run's table of budgets: per size, the epochs each budget rounds to, the FLOPs trained and
    the checkpoint its fork starts from."""
    lines = [f"{'size':10s} {'budget FLOPs':>13s} {'epochs':>7s} {'trained FLOPs':>14s}  start"]
    for size, rungs in sc.rungs.items():
        for r in rungs:
            start = ("long run" if r is rungs[0] else
                     f"fork at epoch {r.fork_epoch} ({CHECKPOINT.format(r.fork_step)})" if r.fork_step else "scratch")
            lines.append(f"{size:10s} {r.budget:13.3e} {r.epochs:7d} {r.flops:14.3e}  {start}")
    return lines


# ---- the fork-vs-cosine check (scripts/fork_check.sh) -----------------------------------------------
def _runs(folder: Path) -> List[dict]:
    import yaml

    out = []
    for d in sorted(p for p in Path(folder).iterdir() if (p / "summary.json").exists()):
        s, cfg = json.loads((d / "summary.json").read_text()), yaml.safe_load((d / "config.yaml").read_text())
        start = checkpoint_step(s.get("forked_from", ""))
        per_step = s["global_batch"] // cfg["train"]["grad_accum_steps"]
        kind = "fork" if start else cfg["train"]["schedule"]
        out.append({"run": d.name, "kind": "long" if kind == "wsd" else kind, "epochs": s["epochs"],
                    "seed": s["seed"], "top1": s["final_top1"], "images": s["images"] - start * per_step,
                    "images_budget": s["images"],
                    "wall_s": s["wall_s"], "start_epoch": start * per_step // s["epoch_images"]})
    return out


def fork_check(folder: Path) -> dict:
    """Each fork's final top-1 beside the cosine run of its budget and seed; per budget the mean
    difference with its paired 95% t-interval and the seeds' spread; and the images trained."""
    from distill.report.stats import mean, paired_diff_ci, std

    runs = _runs(folder)
    by = {(r["kind"], r["epochs"], r["seed"]): r for r in runs}
    budgets = []
    for epochs in sorted({r["epochs"] for r in runs if r["kind"] == "fork"}, reverse=True):
        seeds = sorted(s for k, e, s in by if k == "fork" and e == epochs and ("cosine", e, s) in by)
        fork, cos = [by["fork", epochs, s]["top1"] for s in seeds], [by["cosine", epochs, s]["top1"] for s in seeds]
        diff, half = paired_diff_ci(fork, cos) if seeds else (math.nan, math.inf)
        budgets.append({"epochs": epochs, "seeds": seeds, "fork": fork, "cosine": cos, "diff": diff, "half": half,
                        "start_epoch": by["fork", epochs, seeds[0]]["start_epoch"] if seeds else None,
                        "fork_std": std(fork), "cosine_std": std(cos), "fork_mean": mean(fork) if fork else math.nan,
                        "cosine_mean": mean(cos) if cos else math.nan})
    ladder = [r for r in runs if r["kind"] in ("long", "fork")]
    trained, scratch = sum(r["images"] for r in ladder), sum(r["images_budget"] for r in ladder)
    return {"budgets": budgets, "long": [r for r in runs if r["kind"] == "long"], "images_ladder": trained,
            "images_scratch": scratch, "runs": runs}


def fork_check_markdown(result: dict) -> str:
    """The check as docs/ladder.md shows it."""
    lines = ["| budget (epochs) | fork from epoch | seed | fork top-1 | cosine top-1 | fork - cosine |",
             "|---|---|---|---|---|---|"]
    for b in result["budgets"]:
        for s, f, c in zip(b["seeds"], b["fork"], b["cosine"]):
            lines.append(f"| {b['epochs']} | {b['start_epoch']} | {s} | {f:.2f} | {c:.2f} | {f - c:+.2f} |")
    lines += ["", "| budget (epochs) | seeds | fork mean ± sd | cosine mean ± sd | fork - cosine [paired 95% t] |"
              " within seed noise |", "|---|---|---|---|---|---|"]
    for b in result["budgets"]:
        noise = max(b["fork_std"], b["cosine_std"])
        within = b["diff"] - b["half"] <= 0 <= b["diff"] + b["half"] and abs(b["diff"]) <= noise
        lines.append(f"| {b['epochs']} | {len(b['seeds'])} | {b['fork_mean']:.2f} ± {b['fork_std']:.2f} | "
                     f"{b['cosine_mean']:.2f} ± {b['cosine_std']:.2f} | {b['diff']:+.2f} "
                     f"[{b['diff'] - b['half']:+.2f}, {b['diff'] + b['half']:+.2f}] | {'yes' if within else 'no'} |")
    longs = result["long"]
    if longs:
        from distill.report.stats import mean, std

        top = [r["top1"] for r in longs]
        lines += ["", f"The long wsd runs ({longs[0]['epochs']} epochs, {len(top)} seeds): top-1 "
                      f"{mean(top):.2f} ± {std(top):.2f}."]
    saved = 1 - result["images_ladder"] / max(result["images_scratch"], 1)
    lines += ["", f"Images trained: the long runs and forks {result['images_ladder']:,}; every budget from scratch "
                  f"{result['images_scratch']:,} ({saved:.1%} saved)."]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m distill.report.ladder FOLDER: the fork check's table
    print(fork_check_markdown(fork_check(Path(sys.argv[1]))))
