"""The scaling report: what a ladder of students says about size, compute and distillation.

From the finished runs of a scaling study (`distill.report.study.Scaling`), per method:
- test error (and test cross-entropy) against training compute, Zhai et al.'s saturating law fitted
  on the compute frontier (the configurations no cheaper one beats), with bootstrap intervals;
- test error against parameters at each budget (images seen), the same law;
- the joint law E(N, D) (`distill.report.joint_law`) over every run, which also made the prediction
  for the held-out rung before it ran (`predict_holdout`, kept in `prediction.json`);
- the compute-optimal size per compute budget from the joint law, and the measured best per budget;
- distillation's gain per size and budget (paired by seed), and the compute where it stops paying,
  with and without the teacher's share (its training, and its forwards: live, or a recording shared
  by every run that replays it).
Writes `scaling.json` and the plots into the report folder and appends a section to `report.md`.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from distill.recipe import load_config
from distill.data.sources import load_split
from distill.report import scaling_plots as plots
from distill.report.compare import load_runs
from distill.report.fits import best_per_budget, breakeven_compute, fit_power_law
from distill.report.joint_law import fit_joint_law
from distill.report.scaling_text import markdown
from distill.report.stats import mean, paired_diff_ci, std
from distill.runs import durable, records
from distill.train.build import build_student
from distill.train.cost import count_params

PREDICTION = "prediction.json"


def ladder_variant(method: str, size: str, epochs: int) -> str:
    """The variant name of one cell of the ladder (its runs are `<variant>_s<seed>`)."""
    return f"{method}_{size}_e{epochs}"


def ladder_rows(runs: list, sc) -> List[dict]:
    """One row per finished ladder run: method, size, epochs, seed and what it cost and scored."""
    where = {ladder_variant(m, s, e): (m, s, e) for m in sc.methods for s in sc.sizes for e in sc.epochs}
    rows = []
    for run in runs:
        s = run["summary"]
        variant = s["name"].rsplit("_s", 1)[0]
        if variant not in where or s.get("flops") is None:
            continue
        method, size, epochs = where[variant]
        rows.append({"run": s["name"], "method": method, "size": size, "epochs": epochs, "seed": s["seed"],
                     "params": s["params"], "flops": s["flops"], "images": s["images"], "top1": s["final_top1"],
                     "error": 1 - s["final_top1"] / 100, "test_loss": s.get("test_loss"),
                     "teacher_flops": s.get("teacher_flops", 0.0), "logit_cache": s.get("logit_cache"),
                     "teacher": s.get("teacher"), "holdout": size == sc.holdout})
    return rows


def teacher_shares(rows: List[dict], runs: list, sc) -> None:
    """Each distilled row's share of the teacher's compute, `teacher_share` (FLOPs): the teacher run's
    training spread over every student it taught, plus the teacher forwards of its logit-cache group
    (the recording and the replays' checks) spread over that group; live runs pay their own."""
    teachers = {r["summary"]["name"]: r["summary"].get("flops") or 0.0 for r in runs}
    taught: Dict[str, int] = {}
    for m in sc.methods:
        taught[m] = sum(1 for r in rows if r["method"] == m)
    groups: Dict[str, List[dict]] = {}
    for r in rows:
        if r["logit_cache"]:
            groups.setdefault(r["logit_cache"], []).append(r)
    for r in rows:
        teacher_run = sc.methods[r["method"]].teacher  # None: no teacher, or hub weights (trained elsewhere)
        training = next((f for name, f in teachers.items() if teacher_run and name.startswith(f"{teacher_run}_s")), 0.0)
        group = groups.get(r["logit_cache"], [r])
        inference = sum(g["teacher_flops"] for g in group) / len(group)
        r["teacher_share"] = training / max(taught[r["method"]], 1) + inference


def _means(rows: List[dict], key: str) -> Dict[tuple, dict]:
    """(method, size, epochs) -> mean compute, params, images, value and its spread over seeds."""
    cells: Dict[tuple, List[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["size"], r["epochs"]), []).append(r)
    return {k: {"flops": mean([r["flops"] for r in v]), "params": v[0]["params"], "images": v[0]["images"],
                "value": mean([r[key] for r in v]), "std": std([r[key] for r in v]), "n": len(v), "runs": v}
            for k, v in cells.items()}


def frontier(cells: Dict[tuple, dict], method: str) -> List[tuple]:
    """The method's cells that no cheaper cell beats: the compute frontier Zhai et al. fit."""
    mine = sorted((k for k in cells if k[0] == method), key=lambda k: cells[k]["flops"])
    kept, best = [], math.inf
    for k in mine:
        if cells[k]["value"] < best:
            kept.append(k)
            best = cells[k]["value"]
    return kept


def _try(fit, *args, **kwargs):
    """A fit, or the reason it could not be made (too few points): a report shows both."""
    try:
        return fit(*args, **kwargs)
    except ValueError as e:
        return str(e)


def fit_method(rows: List[dict], method: str) -> dict:
    """Every law of one method: compute frontier (error, cross-entropy), per budget, joint."""
    mine = [r for r in rows if r["method"] == method]
    out = {}
    for key in ("error", "test_loss"):
        cells = _means(mine, key)
        pts = [r for k in frontier(cells, method) for r in cells[k]["runs"]]
        out[f"{key}_vs_compute"] = _try(fit_power_law, [r["flops"] for r in pts], [r[key] for r in pts])
    for epochs in sorted({r["epochs"] for r in mine}):
        pts = [r for r in mine if r["epochs"] == epochs]
        out[f"error_vs_params_e{epochs}"] = _try(fit_power_law, [r["params"] for r in pts], [r["error"] for r in pts])
    out["joint"] = joint(rows, method)
    return out


def joint(rows: List[dict], method: str):
    """The joint law E(N, D) of test error over every run of `method` (or why it could not be fitted)."""
    mine = [r for r in rows if r["method"] == method]
    return _try(fit_joint_law, [r["params"] for r in mine], [r["images"] for r in mine], [r["error"] for r in mine])


def holdout_params(job) -> int:
    """Parameters of the held-out rung, built from its run's config (classes and channels from the
    test split's header: nothing is trained)."""
    cfg = load_config(job.recipe, job.settings)
    test = load_split(cfg.data, train=False)
    return count_params(build_student(cfg.student, test.num_classes, test.in_chans, cfg.data.img_size))


def predict_holdout(folder: Path, done_jobs, sc, holdout_jobs) -> Path:
    """Fit each method's joint law on the finished rungs and write the held-out rung's predicted top-1
    per budget into `folder/prediction.json`, with the time it was made; an existing one is kept
    (a prediction is made once, before the held-out runs start)."""
    path = Path(folder) / PREDICTION
    if path.exists():
        return path
    runs = load_runs([j.run_dir for j in done_jobs if (j.run_dir / records.SUMMARY).exists()])
    rows = ladder_rows(runs, sc)
    params = holdout_params(holdout_jobs[0])
    images = {r["epochs"]: r["images"] for r in rows}
    out = {"made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "holdout": sc.holdout,
           "holdout_params": params, "law": "joint", "fitted_on": len(rows), "predictions": [], "fits": {}}
    for method in sc.methods:
        fit = joint(rows, method)
        out["fits"][method] = fit if isinstance(fit, str) else fit.to_dict()
        for epochs in sc.epochs:
            if isinstance(fit, str) or epochs not in images:
                continue
            err, (lo, hi) = float(fit.predict(params, images[epochs])), fit.band(params, images[epochs])
            out["predictions"].append({"run": ladder_variant(method, sc.holdout, epochs), "method": method,
                                       "epochs": epochs, "params": params, "images": images[epochs],
                                       "predicted_top1": 100 * (1 - err), "low": 100 * (1 - float(hi)),
                                       "high": 100 * (1 - float(lo))})
    durable.write_text(path, json.dumps(out, indent=2) + "\n", f"prediction {path}")
    return path


def baseline(sc) -> str:
    """The method the others are compared with: `plain` if the study has it, else its first."""
    return "plain" if "plain" in sc.methods else next(iter(sc.methods))


def gains(rows: List[dict], sc) -> List[dict]:
    """Each distilled method's gain over plain per (size, budget): top-1 points, paired by seed."""
    base = baseline(sc)
    top1: Dict[tuple, Dict[int, float]] = {}  # (method, size, epochs) -> {seed: top-1}
    for r in rows:
        top1.setdefault((r["method"], r["size"], r["epochs"]), {})[r["seed"]] = r["top1"]
    out = []
    for (method, size, epochs), a in top1.items():
        b = top1.get((base, size, epochs), {})
        seeds = sorted(set(a) & set(b))
        if method == base or not seeds:
            continue
        gain, half = paired_diff_ci([a[s] for s in seeds], [b[s] for s in seeds])
        params = next(r["params"] for r in rows if (r["method"], r["size"]) == (method, size))
        out.append({"method": method, "size": size, "epochs": epochs, "params": params, "budget": epochs,
                    "gain": gain, "gain_ci": half if math.isfinite(half) else 0.0, "seeds": len(seeds)})
    return out


def optimal_sizes(rows: List[dict], fits: dict) -> List[dict]:
    """Compute-optimal size per compute budget from each method's joint law: FLOPs per image grow as a
    power of parameters (fitted on the ladder), so at compute C a model of N parameters sees
    D = C / flops(N) images; N* minimises E(N, D) on a log grid over the ladder's range x [1/2, 4]."""
    per_image = {r["params"]: r["flops"] / r["images"] for r in rows}
    slope, icept = np.polyfit(np.log(list(per_image)), np.log(list(per_image.values())), 1)
    lo, hi = min(per_image), max(per_image)
    grid = np.geomspace(lo / 2, hi * 4, 400)
    budgets = np.geomspace(min(r["flops"] for r in rows), max(r["flops"] for r in rows) * 10, 5)
    out = []
    for method, f in fits.items():
        law = f.get("joint")
        if isinstance(law, str) or law is None:
            continue
        for c in budgets:
            err = law.predict(grid, c / np.exp(icept + slope * np.log(grid)))
            n = float(grid[int(np.argmin(err))])
            out.append({"method": method, "flops": float(c), "params": n, "top1": 100 * (1 - float(err.min())),
                        "at_edge": n in (grid[0], grid[-1])})
    return out


def breakeven(rows: List[dict], fits: dict, sc) -> List[dict]:
    """Where each distilled method's compute law meets plain's, the teacher's share excluded and
    included (its mean share per run of that method)."""
    base = baseline(sc)
    out = []
    for method in (m for m in sc.methods if m != base):
        p, d = fits[base].get("error_vs_compute"), fits[method].get("error_vs_compute")
        if isinstance(p, str) or isinstance(d, str):
            continue
        share = mean([r["teacher_share"] for r in rows if r["method"] == method])
        lo, hi = min(r["flops"] for r in rows) / 10, max(r["flops"] for r in rows) * 100
        found = breakeven_compute(p, d, share, lo, hi)
        out.append({"method": method, "teacher_share_flops": share, "range": [lo, hi],
                    "excluded": found["excluded"], "included": found["included"],
                    "better_at_lo": found["better_at_lo"], "better_at_hi": found["better_at_hi"]})
    return out


def check_prediction(folder: Path, rows: List[dict]) -> Optional[dict]:
    """prediction.json with each prediction's measured top-1 (mean over the held-out seeds) beside it,
    and whether it was made before the first held-out run started (its config.yaml's time)."""
    path = Path(folder) / PREDICTION
    if not path.exists():
        return None
    pred = json.loads(path.read_text())
    made = datetime.fromisoformat(pred["made_at"]).timestamp()
    for p in pred["predictions"]:
        held = [r for r in rows if r["run"].rsplit("_s", 1)[0] == p["run"]]
        p["measured_top1"] = mean([r["top1"] for r in held]) if held else None
        p["measured_std"] = std([r["top1"] for r in held]) if held else None
        p["error_points"] = p["predicted_top1"] - p["measured_top1"] if held else None
        started = [(Path(folder) / r["run"] / records.CONFIG).stat().st_mtime for r in held]
        p["made_before_runs"] = bool(started) and made < min(started)
    return pred


def write_scaling_report(runs: list, sc, folder: Path, out: Path) -> Path:
    """scaling.json, the plots, and a section of report.md; returns scaling.json's path."""
    rows = ladder_rows(runs, sc)
    teacher_shares(rows, runs, sc)
    fits = {m: fit_method(rows, m) for m in sc.methods}
    result = {"runs": rows, "fits": {m: {k: (v if isinstance(v, str) else v.to_dict()) for k, v in f.items()}
                                     for m, f in fits.items()},
              "prediction": check_prediction(folder, rows), "gains": gains(rows, sc),
              "optimal_size": optimal_sizes(rows, fits), "breakeven": breakeven(rows, fits, sc),
              "best_measured": best_per_budget([{**r, "budget": r["epochs"]} for r in rows])}
    figures = _plots(rows, fits, result, sc, out)
    path = Path(out) / "scaling.json"
    durable.write_text(path, json.dumps(result, indent=2, default=float) + "\n", str(path))
    with open(Path(out) / "report.md", "a") as f:
        f.write(markdown(result, sc, figures))
    return path


def _plots(rows, fits, result, sc, out) -> List[Path]:
    cells = _means(rows, "error")
    series = []
    for (method, size) in {(k[0], k[1]) for k in cells}:
        ks = sorted((k for k in cells if k[:2] == (method, size)), key=lambda k: cells[k]["flops"])
        series.append({"label": f"{method} {size}", "method": method, "params": cells[ks[0]]["params"],
                       "compute": [cells[k]["flops"] for k in ks], "error": [cells[k]["value"] for k in ks],
                       "error_std": [cells[k]["std"] for k in ks]})
    series.sort(key=lambda s: (s["params"], s["method"]))
    laws = {m: f["error_vs_compute"] for m, f in fits.items() if not isinstance(f["error_vs_compute"], str)}
    figures = [plots.error_vs_compute(series, laws, out)]
    if result["gains"]:
        figures.append(plots.gain_vs_size(result["gains"], out))
    pred = result["prediction"]
    if pred and any(p["measured_top1"] is not None for p in pred["predictions"]):
        figures.append(plots.predicted_vs_measured(
            [{"label": p["run"], "predicted": p["predicted_top1"], "low": p["low"], "high": p["high"],
              "measured": p["measured_top1"]} for p in pred["predictions"] if p["measured_top1"] is not None], out))
    longest = max(sc.epochs)
    for method, f in fits.items():
        law = f.get(f"error_vs_params_e{longest}")
        if not isinstance(law, str):
            pts = [r for r in rows if r["method"] == method and r["epochs"] == longest]
            figures.append(plots.fit_curve([r["params"] for r in pts], [r["error"] for r in pts], law, out,
                                           "student parameters", f"test error ({longest} epochs)",
                                           f"error_vs_params_{method}.png"))
    return figures
