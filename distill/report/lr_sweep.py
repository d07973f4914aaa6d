"""A learning rate per size in a scaling study (`scaling.lr_sweep`, docs/ladder.md).

Before a size's ladder runs, the study trains it once per rate of the sweep: the baseline method
(`plain` if the study has it), the study's first seed, the size's smallest budget (under `budgets`,
a warmup-stable-decay run from scratch of that budget's epochs: what its fork is, bit for bit). The
best final top-1 picks the size's `train.lr`; `<study folder>/lrs.json` records every rate tried,
its top-1 and the choice, once made (a re-run of the study reads it and skips the complete runs).
Every later run of that size uses the chosen rate. The held-out size's sweep runs after the
prediction for it is written: its top-1 at the smallest budget is a measurement of the held-out rung.

A method named in `scaling.lr_sweep_methods` (besides the baseline) is swept on itself as well, at each
size it runs at, and its runs there take its own choice: lrs.json's `<size>/<method>`, its sweep runs
`lrsweep_<size>_<method>_lr<rate>`. The rate then differs from the baseline's by design: it is added to
the method's declared differences, so its gain is reported as each method at its own best rate.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from distill.errors import ConfigError
from distill.runs import durable, records
from distill.runs.checkpoint import utc_now

LRS = "lrs.json"
PREFIX = "lrsweep_"  # a sweep run's variant: lrsweep_<size>_lr<rate>; never a ladder cell or a baseline


def sweep_variant(key: str, lr: float) -> str:
    return f"{PREFIX}{key.replace('/', '_')}_lr{lr:g}"


def size_of_key(key: str) -> str:
    """The size a sweep (`key`: a size, or `<size>/<method>`) runs at."""
    return key.split("/")[0]


def sweeps(sc, base: str, cells: Dict[str, tuple], path: Path) -> tuple:
    """({variant: the sweep whose rate it takes}, {sweep: the variant of its method at its size's smallest
    budget}) for the study's `cells` ({variant: (method, size)}): the size's sweep (the baseline's), or
    `<size>/<method>` where the method is in `scaling.lr_sweep_methods` and that is one of its cells."""
    names = list(sc.lr_sweep_methods)
    if any(m not in sc.methods for m in names) or len(set(names)) < len(names):
        raise ConfigError(f"study {path}: scaling.lr_sweep_methods={names} must name distinct "
                          f"methods of scaling.methods ({', '.join(sc.methods)})")
    own = [m for m in names if m != base]
    epochs = {v: int(e) for v, (m, s) in cells.items() if v.startswith(f"{m}_{s}_e")
              and (e := v[len(f"{m}_{s}_e"):]).isdigit()}  # the ladder's cells, not the axes'
    swept = {cells[v] for v in epochs if cells[v][0] in own}
    key_of = {v: f"{s}/{m}" if (m, s) in swept else s for v, (m, s) in cells.items()}
    smallest = {}
    for key in dict.fromkeys(key_of.values()):
        size, _, method = key.partition("/")
        smallest[key] = min((v for v in epochs if cells[v] == (method or base, size)), key=epochs.get)
    return key_of, smallest


def is_sweep(variant: str) -> bool:
    return variant.startswith(PREFIX)


def expand(study, path: Path, size_of: Dict[str, str], smallest: Dict[str, str]) -> None:
    """Put each sweep's variants before the first ladder variant that takes its rate in `study.runs`: the
    grid's rates, then those added beyond its edge (lrs.json's `widened`, written by `choose`). `size_of`:
    ladder variant -> its sweep (`sweeps`); `smallest`: sweep -> the variant at the smallest budget whose
    settings (fork aside: the sweep trains from scratch) each sweep run takes, with its rate. A variant
    on a sweep of its own method declares train.lr (it differs from the baseline's by design)."""
    sc = study.scaling
    rates = list(sc.lr_sweep)
    if len(set(rates)) != len(rates) or min(rates) <= 0:
        raise ConfigError(f"study {path}: scaling.lr_sweep={rates} must be distinct learning rates > 0")
    if sc.lr_sweep_widen < 0 or (sc.lr_sweep_widen and len(rates) < 2):
        raise ConfigError(f"study {path}: scaling.lr_sweep_widen={sc.lr_sweep_widen} must be >= 0, and widening "
                          "needs at least 2 rates in lr_sweep (their ratio is the step)")
    lrs = chosen(Path(study.output_dir) / study.name)
    sc.size_of, sc.sweep_size = dict(size_of), {}
    runs, seed = {}, study.seeds[0]
    for variant, run in study.runs.items():
        key = size_of.get(variant)
        if key is not None and sweep_variant(key, rates[0]) not in runs:
            base = study.runs[smallest[key]]
            for lr in [*rates, *lrs.get(key, {}).get("widened", [])]:
                runs[sweep_variant(key, lr)] = replace(base, seeds=[seed], fork=None,
                                                       overrides=[*base.overrides, f"train.lr={lr:g}"])
                sc.sweep_size[sweep_variant(key, lr)] = key
        if "/" in (key or "") and "train.lr" not in run.declared_differences:
            run = replace(run, declared_differences=[*run.declared_differences, "train.lr"])
        runs[variant] = run
    study.runs = runs


def chosen(folder: Path) -> Dict[str, dict]:
    """lrs.json of the study folder: size -> {chosen, tried, ...}; {} before any choice."""
    path = Path(folder) / LRS
    return json.loads(path.read_text()) if path.exists() else {}


def choose(folder: Path, sc, jobs) -> Dict[str, dict]:
    """Choose the rate of every size whose sweep runs are all complete and that has none yet; write
    lrs.json (a choice once made is kept). A best rate on the grid's lowest or highest edge has not been
    bracketed: while the size has had fewer than `scaling.lr_sweep_widen` rates added, the next rate one
    grid step beyond is recorded (`widened`) to be run instead of a choice; past that, the choice records
    `edge` and the study says so. Returns lrs.json's content."""
    lrs = chosen(folder)
    sweeps: Dict[str, list] = {}
    for job in (j for j in jobs if j.sweep_of is not None):
        sweeps.setdefault(job.sweep_of, []).append(job)
    new = False
    for size, mine in sweeps.items():
        entry = lrs.get(size, {})
        if "chosen" in entry or not all((j.run_dir / records.SUMMARY).exists() for j in mine):
            continue
        tried = []
        for job in mine:
            s = json.loads((job.run_dir / records.SUMMARY).read_text())
            lr = float(next(x for x in reversed(job.settings) if x.startswith("train.lr=")).split("=", 1)[1])
            tried.append({"lr": lr, "top1": s["final_top1"], "run": job.run_dir.name})
        best = max(tried, key=lambda t: t["top1"])  # the first of equal top-1s: the sweep's order
        rates = sorted(t["lr"] for t in tried)
        edge = "lowest" if best["lr"] == rates[0] else "highest" if best["lr"] == rates[-1] else None
        widened = entry.get("widened", [])
        new = True
        if edge and len(widened) < sc.lr_sweep_widen:
            step = rates[1] / rates[0] if edge == "lowest" else rates[-1] / rates[-2]  # the grid's ratio at that edge
            nxt = rates[0] / step if edge == "lowest" else rates[-1] * step
            lrs[size] = {"widened": [*widened, nxt]}
            print(f"== study: {size}: the best rate, {best['lr']:g}, is the sweep's {edge}: {nxt:g} is tried too",
                  flush=True)
            continue
        lrs[size] = {"chosen": best["lr"], "epochs": int(dict(x.split("=", 1) for x in mine[0].settings)["train.epochs"]),
                     "seed": mine[0].seed, "tried": tried, "edge": edge, "widened": widened, "chosen_at": utc_now()}
        if edge:
            print(f"== study: {size}: the best rate, {best['lr']:g}, is the sweep's {edge}: a better one may lie "
                  f"{'below' if edge == 'lowest' else 'above'} it (widen scaling.lr_sweep)", flush=True)
    if new:
        durable.write_text(Path(folder) / LRS, json.dumps(lrs, indent=2) + "\n", f"learning rates {folder / LRS}")
    return lrs


def lr_setting(sc, variant: str, folder: Path) -> tuple:
    """(the `train.lr=` override of a ladder variant, or None; the size whose rate it still waits for, or None)."""
    if sc is None or variant not in sc.size_of:
        return None, None
    size = sc.size_of[variant]
    entry = chosen(folder).get(size, {})
    return (f"train.lr={entry['chosen']:g}", None) if "chosen" in entry else (None, size)


def check_overrides(sc, overrides, path: Path) -> None:
    """A command-line train.lr would overrule every size's choice: refused where the study sweeps."""
    if sc.lr_sweep and any(o.split("=", 1)[0].strip() == "train.lr" for o in overrides):
        raise ConfigError(f"study {path}: train.lr= on the command line cannot apply: scaling.lr_sweep chooses each "
                          "size's rate; edit lr_sweep in the study file instead")


def dry_run_lines(sc, folder: Path, rows=()) -> List[str]:
    """What the dry run says of the rates: chosen (lrs.json), or decided after the sweep's runs; and, with
    `lr_sweep_widen`, the most the runs beyond a grid's edge could add to the estimate's `rows`."""
    if not sc.lr_sweep:
        return []
    lrs = chosen(folder)
    sizes = list(dict.fromkeys(sc.sweep_size.values()))
    lines = ["", f"learning rate per size: {len(sc.sweep_size)} sweep runs (lrsweep_<size>_lr<rate>), rates "
             f"{', '.join(f'{r:g}' for r in sc.lr_sweep)} at each size's smallest budget, the study's first seed; the "
             "best final top-1 sets the size's train.lr" + (f"; {', '.join(sc.lr_sweep_methods)} each on itself "
             "(<size>/<method>)" if sc.lr_sweep_methods else "")]
    for size in sizes:
        if "chosen" in lrs.get(size, {}):
            edge = lrs[size].get("edge")
            lines.append(f"  {size}: train.lr={lrs[size]['chosen']:g} (chosen, {LRS}" + (
                f"; the sweep's {edge} rate: a better one may lie beyond it)" if edge else ")"))
        else:
            lines.append(f"  {size}: decided after its sweep runs; its runs above show the recipe's train.lr, "
                         "which the chosen rate replaces" + (" (held out: swept after the prediction)"
                                                            if size_of_key(size) == sc.holdout else ""))
    hours = {r["run"]: r.get("hours_calibrated", r["hours_here"]) for r in rows}
    more = {size: sc.lr_sweep_widen - len(lrs.get(size, {}).get("widened", [])) for size in sizes
            if "chosen" not in lrs.get(size, {})}
    if any(n > 0 for n in more.values()):  # a widened run is as long as its size's first sweep run
        first = {size: next((h for run, h in hours.items() if run.startswith(f"{sweep_variant(size, sc.lr_sweep[0])}_s")),
                            0.0) for size in more}
        runs = sum(more.values())
        lines.append(f"  widening (lr_sweep_widen {sc.lr_sweep_widen}): up to {runs} more sweep "
                     f"run{'s' * (runs != 1)}, {sum(n * first[s] for s, n in more.items()):.3f} h at most, not in the "
                     "total above; each runs only where a size's best rate is on its grid's edge")
    return lines


def waiting(job) -> Optional[str]:
    """Why a job cannot start yet, or None: a ladder run whose size's rate is not chosen."""
    if getattr(job, "waits_for_lr", None):
        return f"not run: the learning rate of size {job.waits_for_lr} is not chosen (its sweep runs are not all complete)"
    return None
