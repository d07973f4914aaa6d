"""`distill compare RUN_DIR... [--out DIR]`: finished runs side by side, grouped into variants.

A variant is a run name without its `_s<seed>` suffix; its seeds give the mean, the standard
deviation and, against the plain baseline of the same student, a 95% interval on the difference:
paired by seed where the runs pair (`pairs`), Welch's otherwise. With `--out`, writes report.md
and PNG plots there.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import yaml

from distill.errors import ConfigError
from distill.precision import word
from distill.report import plots
from distill.report.baselines import describe, differences, saved_config
from distill.report.stats import PAIRED, WELCH, diff_ci, mean, paired_diff_ci, std
from distill.runs import records

def load_runs(run_dirs) -> list:
    """Each finished run's summary, metrics and views' seed; a run named twice is refused (it would count
    as two seeds of its variant)."""
    runs, seen = [], {}
    for d in map(Path, run_dirs):
        if d.resolve() in seen:
            raise ConfigError(f"{d} is given twice (also as {seen[d.resolve()]}): it would count as two seeds; "
                              "list each run once")
        seen[d.resolve()] = d
        path = d / records.SUMMARY
        if not d.is_dir():
            raise ConfigError(f"{d} does not exist: pass run folders (runs/<name>)")
        if not path.exists() and not (d / records.CONFIG).is_file():
            raise ConfigError(f"{d} is not a run folder (no {records.CONFIG}): pass run folders (runs/<name>)")
        if not path.exists():
            raise ConfigError(f"{d} has no {records.SUMMARY}: not a finished run (resume it with train.resume=auto)")
        summary = json.loads(path.read_text())
        runs.append({"dir": d, "summary": summary, "metrics": records.read_metrics(d),
                     "views": views_seed(d, summary.get("seed"))})
    return runs


def views_seed(run_dir: Path, seed) -> object:
    """The seed of the run's sample order and augmentation (`data.aug_seed`, or `seed` where unset),
    from its config.yaml; None where the folder has none (then the run pairs with nothing)."""
    path = run_dir / records.CONFIG
    if not path.exists():
        return None
    aug_seed = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("aug_seed")
    return aug_seed if aug_seed is not None else seed


def pairs(runs: list, base_runs: list):
    """(finals, base finals), in the same seed order, where the two variants pair; else None.

    They pair when every seed of `runs` (distinct, at least 2) also ran in the baseline (the same
    initialisations) and each seed's two runs saw the same views (the same effective
    `data.aug_seed`). Baseline seeds beyond those of `runs` are left out of the pairs."""
    def by_seed(rs):
        seeds = [r["summary"].get("seed") for r in rs]
        return None if None in seeds or len(set(seeds)) < len(seeds) else dict(zip(seeds, rs))

    a, b = by_seed(runs), by_seed(base_runs)
    if a is None or b is None or not set(a) <= set(b) or len(a) < 2:
        return None
    if any(a[s]["views"] is None or a[s]["views"] != b[s]["views"] for s in a):
        return None
    seeds = sorted(a)
    return [a[s]["summary"]["final_top1"] for s in seeds], [b[s]["summary"]["final_top1"] for s in seeds]


def baseline_key(run: dict) -> tuple:
    """What a distilled variant and its plain baseline share: the student (its model and, for a ladder's
    rung, its shape, from config.yaml) and the images it trained on. The distillation token is left out."""
    s, path = run["summary"], run["dir"] / records.CONFIG
    student = ((yaml.safe_load(path.read_text()) or {}).get("student") or {}) if path.exists() else {}
    images = s.get("images") or (s["epochs"] * s["epoch_images"] if s.get("epoch_images") else None)
    return (s.get("student", "?"), images, *(student.get(k) for k in ("embed_dim", "depth", "num_heads", "patch_size")))


def variant_of(name: str) -> str:
    return re.sub(r"_s\d+$", "", name)


def group(runs: list) -> dict:
    variants = {}
    for run in runs:
        variants.setdefault(variant_of(run["summary"]["name"]), []).append(run)
    return variants


def variant_rows(variants: dict, baselines: Optional[dict] = None, declared: Optional[dict] = None) -> list:
    """One row per variant: statistics over its seeds, and the difference from its plain baseline:
    `baselines[variant]` where given (a study's, checked like with like before its runs), else a plain
    variant of the same student, one whose config differs only in the method's keys where there is
    one. `also_differs`: the other keys the two runs' config.yaml differ in, `declared` or not."""
    rows = []
    for name, runs in variants.items():
        s = [r["summary"] for r in runs]
        best, final = [x["best_top1"] for x in s], [x["final_top1"] for x in s]
        agree = [x["teacher_agreement"] for x in s if x.get("teacher_agreement") is not None]
        rows.append({"variant": name, "student": s[0].get("student", "?"), "teacher": s[0].get("teacher"),
                     "distill_type": s[0].get("distill_type", "none"), "n": len(s), "final": final,
                     "best_mean": mean(best), "best_std": std(best), "final_mean": mean(final), "final_std": std(final),
                     "params": s[0].get("params"), "gflops": s[0].get("gflops"),
                     "img_per_s": mean([x["train_img_per_s"] for x in s]), "wall_s": mean([x["wall_s"] for x in s]),
                     "images": s[0]["epochs"] * s[0]["epoch_images"] if s[0].get("epoch_images") else None,
                     "agreement": mean(agree) if agree else None})
    by_name = {r["variant"]: r for r in rows}
    for row in rows:
        if (baselines or {}).get(row["variant"]) in by_name:
            base = by_name[baselines[row["variant"]]]
        else:
            key = baseline_key(variants[row["variant"]][0])
            found = [b for b in rows if b["distill_type"] == "none" and b is not row
                     and baseline_key(variants[b["variant"]][0]) == key]
            base = next((b for b in found if not _other_differences(variants, row, b)), found[0] if found else None)
        if row["distill_type"] != "none" and base is not None:
            row["baseline"] = base["variant"]
            row["also_differs"] = describe(_other_differences(variants, row, base) or {},
                                           (declared or {}).get(row["variant"], ()))
            paired = pairs(variants[row["variant"]], variants[base["variant"]])
            row["test"] = WELCH if not paired else PAIRED if row["n"] == base["n"] else f"{PAIRED}, {row['n']} pairs"
            row["delta"], row["delta_ci"] = paired_diff_ci(*paired) if paired else diff_ci(row["final"], base["final"])
    return rows


def _other_differences(variants: dict, row: dict, base: dict) -> Optional[dict]:
    """The keys outside the method's in which the variant's first run and the baseline's run of the
    same seed (else its first) differ, from their config.yaml; None where either has none. And
    `precision computed`, where the two variants' runs did not all compute in one precision: a config
    of `train.mixed_precision=auto` reads the same on every machine, bf16 and fp32 alike."""
    run = variants[row["variant"]][0]
    seed = run["summary"].get("seed")
    other = next((b for b in variants[base["variant"]] if b["summary"].get("seed") == seed), variants[base["variant"]][0])
    a, b = saved_config(run["dir"]), saved_config(other["dir"])
    diffs = None if a is None or b is None else differences(a, b)
    computed = [sorted({r["summary"].get("mixed_precision") for r in variants[v]} - {None})
                for v in (row["variant"], base["variant"])]
    if len({*computed[0], *computed[1]}) > 1:
        diffs = {**(diffs or {}), "precision computed": tuple("/".join(map(word, c)) or "?" for c in computed)}
    return diffs


def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _md(head: list, rows: list) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def variant_table(rows: list) -> str:
    head = ["variant", "seeds", "best top-1 %", "final top-1 %", "baseline", "vs baseline (95% CI)", "test",
            "also differs from its baseline in", "params (M)", "GFLOPs", "images trained", "train img/s", "wall (s)",
            "agrees with teacher %"]
    body = []
    for r in rows:
        delta = "-" if "delta" not in r else (f"{r['delta']:+.2f} ± {r['delta_ci']:.2f}" if math.isfinite(r["delta_ci"])
                                               else f"{r['delta']:+.2f} (one seed: no interval)")
        body.append([r["variant"], r["n"], f"{r['best_mean']:.2f} ± {r['best_std']:.2f}",
                     f"{r['final_mean']:.2f} ± {r['final_std']:.2f}", r.get("baseline", "-"), delta,
                     r.get("test", "-") if math.isfinite(r.get("delta_ci", 0.0)) else "-", r.get("also_differs", "-"),
                     _f(r["params"] and r["params"] / 1e6),
                     _f(r["gflops"], ".3f"), _f(r["images"], ","), _f(r["img_per_s"], ".0f"), _f(r["wall_s"], ".0f"), _f(r["agreement"])])
    return _md(head, body)


def markdown_table(summaries: list) -> str:
    """One row per run: accuracy, size, speed, time."""
    head = ["run", "student", "distillation", "best top-1 %", "final top-1 %", "params (M)", "train img/s", "wall (s)"]
    body = [[s["name"], s.get("student", "-"),
             "-" if s.get("distill_type") in (None, "none") else f"{s['distill_type']} from {s.get('teacher')}",
             _f(s.get("best_top1")), _f(s.get("final_top1")), _f(s.get("params", 0) / 1e6),
             _f(s.get("train_img_per_s"), ".0f"), _f(s.get("wall_s"), ".0f")] for s in summaries]
    return _md(head, body)


def provenance_table(summaries: list) -> str:
    keys = ["git_commit", "torch", "timm", "accelerate", "hardware", "world_size"]
    body = [[s["name"], s.get("seed", "-"), *[s.get(k, "-") for k in keys]] for s in summaries]
    return _md(["run", "seed", *keys], body)


def write_report(runs: list, out: Path, baselines: Optional[dict] = None, declared: Optional[dict] = None) -> Path:
    """report.md with the tables and the PNG plots beside it (`baselines`, `declared`: see `variant_rows`)."""
    out.mkdir(parents=True, exist_ok=True)
    variants = group(runs)
    rows = variant_rows(variants, baselines, declared)
    figures = [plots.curves(variants, out), plots.bars(rows, out)]
    if any("delta" in r for r in rows):
        figures.append(plots.gains(rows, out))
    students = {r["student"] for r in rows if r["student"].startswith("distill_vit")}
    if len(students) > 1:
        figures += plots.scaling(rows, out)
    summaries = [r["summary"] for r in runs]
    text = ["# Comparison", "",
            "Mean ± standard deviation over seeds; 'vs baseline' is the difference in final top-1 from the plain "
            "variant named in 'baseline' (the same student), with its 95% t-interval (± half-width). Like with like: "
            "a variant and its baseline differ only in the method's keys (distill/report/baselines.py); any other "
            "key their config.yaml differ in is listed beside the gain, which measures it too, and marked "
            "declared where the study declared it. 'test' says which interval: "
            f"'{PAIRED}' (scipy.stats.ttest_rel, the per-seed differences) where every seed of the variant also ran "
            "in the plain baseline on the same views (data.aug_seed; 'k pairs' when the baseline ran more seeds, "
            "which are then left out of the difference), "
            f"'{WELCH}' (scipy.stats.ttest_ind, equal_var=False) otherwise.", "",
            variant_table(rows), "", "## Runs", "", markdown_table(summaries), "",
            "## Plots", "", *[f"![{f.stem}]({f.name})" for f in figures], "",
            "## Provenance", "", provenance_table(summaries), ""]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
