"""The scaling report of a scaling study: the ladder's runs as a table for `distill fit`, fitted by the
same code (`distill.report.fit_claims`), so a study's report and `distill fit` on its runs.jsonl
cannot disagree; plus the prediction the study made for its held-out rung before that rung ran
(`predict_holdout`, the same fit on the other rungs, kept in `prediction.json`), with the
measurement beside it.

Writes `runs.jsonl`, `fits.json` and the fit's plots into the report folder and appends a section
to `report.md`.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from distill.recipe import load_config
from distill.report.compare import load_runs
from distill.report.fit_report import check_declared, fit_rows, markdown, plots
from distill.report.fit_runs import MIN_SIZES, MIN_SIZES_TO_CHOOSE
from distill.errors import ConfigError
from distill.report.run_table import check_row, check_table, read_runs
from distill.report.stats import mean, std
from distill.runs import durable, records

PREDICTION = "prediction.json"
BOOTSTRAP = 400  # refits per law in a study's report, as `distill fit`'s default
# a prediction's fields filled in from the held-out runs after it was made: left out of its sha256
MEASURED = ("measured_top1", "seeds", "measured_std", "error_points", "made_before_runs")


def predictions_sha256(predictions: List[dict]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a prediction.json's `predictions` as
    made: every field but the measurement (`MEASURED`, null or 0 when made), so filling the measurement
    in keeps the hash and any edit of what the law said changes it."""
    made = [{k: v for k, v in p.items() if k not in MEASURED} for p in predictions]
    return hashlib.sha256(json.dumps(made, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ladder_variant(method: str, size: str, epochs: int) -> str:
    """The variant name of one cell of the ladder (its runs are `<variant>_s<seed>`)."""
    return f"{method}_{size}_e{epochs}"


def study_method(sc, name: str) -> str:
    """The study method a fit label stands for: a data axis's `plain-u20000` is `plain` (data_axis.py)."""
    return sc.data_methods.get(name, (name,))[0]


def ladder_rows(runs: list, sc) -> List[dict]:
    """One row per finished ladder run: method, size, epochs, seed and what it cost and scored."""
    methods = [*sc.methods, *sc.data_methods]  # a data axis's labels are methods of the fit
    where = {ladder_variant(m, s, e): (m, s, e) for m in methods for s in sc.sizes for e in sc.epochs}
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
                     **run_facts(run), "budget": budget_of(sc, method, size, epochs), "holdout": size == sc.holdout})
    return rows


def check_prior_runs(path: Path, sc) -> str:
    """`scaling.prior_runs`, resolved against the study file and checked as `distill fit` checks a table;
    none of its rows may be of the held-out size. Returns the resolved path."""
    prior = (Path(path).parent / sc.prior_runs).resolve()
    try:
        rows = read_runs(prior)
    except ConfigError as e:
        raise ConfigError(f"study {path}: scaling.prior_runs: {e}") from None
    held = [r.get("run", "a run") for r in rows if r.get("size") == sc.holdout]
    if held:
        raise ConfigError(f"study {path}: scaling.prior_runs {prior} has {len(held)} runs of the held-out size "
                          f"{sc.holdout} ({held[0]}, ...): hold out a size it does not have")
    return str(prior)


def check_forms(path: Path, sc) -> None:
    """Before any run: each declared law (`scaling.forms`) is a known form of a method the study fits,
    and a method predicted on the held-out rung from 3 fitted sizes declares its law, since choosing
    one by leaving a size out needs 4 (`distill.report.fit_runs`, docs/fit.md)."""
    prior = prior_rows(sc)  # fitted with the study's own: their methods (an earlier data axis) take a law too
    check_declared(sc.forms, list(dict.fromkeys([*sc.methods, *sc.data_methods, *(r["method"] for r in prior)])),
                   f"study {path}: scaling.forms.")
    for method in sc.methods:
        sizes = fitted_sizes(sc, method, prior)
        # fewer than MIN_SIZES fit no law at all: check_predictable refuses that before any run
        if method not in sc.forms and MIN_SIZES <= len(sizes) < MIN_SIZES_TO_CHOOSE:
            raise ConfigError(f"study {path}: {method} is fitted on {len(sizes)} sizes, and choosing its law by "
                              f"leaving one size out needs {MIN_SIZES_TO_CHOOSE} (docs/fit.md); add a size, or "
                              f"declare its law (scaling.forms: {{{method}: chinchilla}})")


def check_predictable(path: Path, sc) -> None:
    """Before any run of a study with a held-out rung: each method it predicts there is fitted on at least
    MIN_SIZES sizes (its own below the held-out one, and the prior rows'), or no law could predict it and
    the study would stop at its prediction, its fitted runs spent."""
    prior = prior_rows(sc)
    for method in sc.methods:
        sizes = fitted_sizes(sc, method, prior)
        if len(sizes) < MIN_SIZES:
            raise ConfigError(f"study {path}: {method} is fitted on {len(sizes)} size{'s' * (len(sizes) != 1)} "
                              f"below the held-out {sc.holdout}, and a law needs {MIN_SIZES} (docs/fit.md), so "
                              f"nothing could predict that rung; add sizes (a scaling study always holds one out: "
                              f"scaling.holdout, else its largest)")


def fitted_sizes(sc, method: str, prior: List[dict]) -> set:
    """The sizes `method`'s law is fitted on: its own below the held-out one, and those of the prior rows."""
    own = {s for s in (sc.methods[method].sizes or sc.sizes) if s != sc.holdout}
    return own | {r.get("size") or r["params"] for r in prior if r["method"] == method}


def prior_rows(sc) -> List[dict]:
    """The rows of `scaling.prior_runs` (a ladder extended: an earlier study's committed runs.jsonl), all
    fitted: an earlier study's held-out rows are data here."""
    if not sc.prior_runs:
        return []
    return [{**r, "holdout": False} for r in read_runs(sc.prior_runs)]


def budget_of(sc, method: str, size: str, epochs: int) -> Optional[float]:
    """The training FLOPs a budgets study asked of a cell (None under `epochs`): the naive baselines of
    its prediction compare sizes at one budget, where each trains its own images."""
    images = sc.data_methods.get(method, (None, None))[1]
    rungs = sc.rungs.get(f"{size}-u{images}" if images else size, [])
    return next((r.budget for r in rungs if r.epochs == epochs), None)


EXPORTED = ("teacher", "lr", "lr_effective", "unique_images", "started_at", "finished_at", "wall_s", "forked_from",
            "mixed_precision")


def run_facts(run: dict) -> dict:
    """What runs.jsonl carries beyond the fit's fields, from the run's summary.json and config.yaml:
    `teacher` (the teacher run's folder name, else its hub model, else None), `lr` (train.lr as set;
    `lr_effective` after the batch rule), `unique_images` (data.train_subset, else the source's
    training split), `started_at`, `finished_at` (UTC, as the run recorded them: a fork keeps its long run's
    start, which its checkpoint carries), `wall_s`, `forked_from` (the checkpoint a fork started from) and
    `mixed_precision` (what it computed in: Accelerate's value, `no` for fp32)."""
    import yaml

    from distill.data.sources import SOURCES

    s, path = run["summary"], Path(run["dir"]) / records.CONFIG
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    data, train, teacher = cfg.get("data") or {}, cfg.get("train") or {}, cfg.get("teacher") or {}
    source = SOURCES[data["name"]].shape if data.get("name") in SOURCES else None
    unique = data.get("train_subset") or (source[0] if source else None)
    if unique and source:
        unique = min(unique, source[0])
    named = Path(teacher["checkpoint"]).name if teacher.get("checkpoint") and s.get("teacher") else None
    return {"teacher": named or s.get("teacher"), "lr": train.get("lr"), "lr_effective": s.get("lr"),
            "unique_images": unique, "started_at": s.get("started_at"), "finished_at": s.get("finished_at"),
            "wall_s": s.get("wall_s"), "forked_from": s.get("forked_from"), "mixed_precision": s.get("mixed_precision")}


def predict_holdout(folder: Path, done_jobs, sc, holdout_jobs) -> Path:
    """Fit each method's law on the finished rungs, as `distill fit` does (the form each method's
    leave-one-size-out error picks), and write the held-out rung's predicted top-1 per budget (95%
    interval for the mean of its planned seeds) into `folder/prediction.json`: `made_at`, `sha256`
    (`predictions_sha256`), `predictions` with fits.json's prediction fields (the measurement null) and
    `power` (fit_claims.power: the chance the test could pass were the law right, said before it runs);
    an existing one is kept (a prediction is made once, before the held-out runs start)."""
    path = Path(folder) / PREDICTION
    if path.exists():
        return path
    runs = load_runs([j.run_dir for j in done_jobs if (j.run_dir / records.SUMMARY).exists()])
    rows = ladder_rows(runs, sc)
    table = fit_table(rows, runs, sc)
    cells = {ladder_variant(m, sc.holdout, e): (m, e) for m in sc.methods for e in sc.epochs}
    holdout_jobs = [j for j in holdout_jobs if j.variant in cells]  # the rung's cells (not its lr sweep)
    from distill.report.estimate import size_shape  # torch-heavy, and only a study that predicts needs it
    shape = size_shape(load_config(holdout_jobs[0].recipe, holdout_jobs[0].settings), sc)
    params, per_image, per_epoch = shape.params, shape.image_flops, shape.epoch_images
    planned: Dict[tuple, int] = {}
    for j in holdout_jobs:
        planned[cells[j.variant]] = planned.get(cells[j.variant], 0) + 1
    held = [{"method": m, "params": params, "images": e * per_epoch, "flops": per_image * e * per_epoch, "seed": s,
             "top1": None, "holdout": True, "budget": budget_of(sc, m, sc.holdout, e)}
            for (m, e), n in planned.items() for s in range(n)]
    result, _ = fit_rows(table + held, BOOTSTRAP, None, max_epochs=sc.fit_max_epochs, forms=sc.forms)
    epochs_of = {e * per_epoch: e for _, e in planned}
    predictions = [{"run": ladder_variant(p["method"], sc.holdout, epochs_of[p["images"]]),
                    "epochs": epochs_of[p["images"]], "form": result["laws"][p["method"]]["form"],
                    "planned_seeds": planned[p["method"], epochs_of[p["images"]]], **p}
                   for p in result["predictions"]]
    out = {"made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "sha256": predictions_sha256(predictions), "holdout": sc.holdout, "holdout_params": params,
           "law": {m: law["form"] for m, law in result["laws"].items()}, "fitted_on": len(table),
           **({"fit_max_epochs": sc.fit_max_epochs} if sc.fit_max_epochs is not None else {}),
           "fits": result["laws"], "predictions": predictions, "power": result["holdout_power"]}
    path.parent.mkdir(parents=True, exist_ok=True)  # a study of prior runs and a held-out rung alone has run nothing yet
    durable.write_text(path, json.dumps(out, indent=2) + "\n", f"prediction {path}")
    return path


def baseline(sc) -> str:
    """The method the others are compared with: `plain` if the study has it, else its first."""
    return "plain" if "plain" in sc.methods else next(iter(sc.methods))


def check_prediction(folder: Path, rows: List[dict]) -> Optional[dict]:
    """prediction.json with each prediction's measured top-1 (mean over the held-out seeds) beside it,
    whether it was made before the first held-out run started (its config.yaml's time), and
    `sha256_matches`: whether its predictions still hash to the `sha256` written when it was made."""
    path = Path(folder) / PREDICTION
    if not path.exists():
        return None
    pred = json.loads(path.read_text())
    made = datetime.fromisoformat(pred["made_at"]).timestamp()
    pred["sha256_matches"] = pred.get("sha256") == predictions_sha256(pred["predictions"])
    for p in pred["predictions"]:
        held = [r for r in rows if r["run"].rsplit("_s", 1)[0] == p["run"]]
        p["measured_top1"] = mean([r["top1"] for r in held]) if held else None
        p["seeds"] = len(held)
        p["measured_std"] = std([r["top1"] for r in held]) if held else None
        p["error_points"] = p["predicted_top1"] - p["measured_top1"] if held else None
        started = [(Path(folder) / r["run"] / records.CONFIG).stat().st_mtime for r in held]
        p["made_before_runs"] = bool(started) and made < min(started)
    return pred


def fit_table(rows: List[dict], runs: list, sc) -> List[dict]:
    """The ladder's runs as `distill fit` reads them (docs/fit.md), after `scaling.prior_runs`'s:
    `teacher_flops` the training FLOPs of the method's teacher run (none for hub weights, trained
    elsewhere), `baseline` the study's."""
    trained = {r["summary"]["name"]: r["summary"].get("flops") for r in runs}
    base = baseline(sc)
    table = prior_rows(sc)  # checked with the study's own: one teacher cost and one baseline per method
    for r in rows:
        teacher = sc.methods[study_method(sc, r["method"])].teacher
        cost = next((f for name, f in trained.items() if teacher and name.startswith(f"{teacher}_s")), None)
        row = {k: r[k] for k in ("run", "method", "size", "params", "images", "flops", "seed", "top1", "test_loss",
                                 "holdout", "budget", *EXPORTED)}
        if cost:
            row["teacher_flops"] = cost
        if study_method(sc, r["method"]) != r["method"]:
            row["baseline"] = study_method(sc, r["method"])  # unique images against repetition
        elif r["method"] != base:
            row["baseline"] = base
        table.append(check_row(row, f"run {r['run']}"))
    return check_table(table, "the study's runs")


def _prediction(pred) -> List[str]:
    if not pred:
        return ["No prediction was made (the study has no held-out rung that ran after the others).", ""]
    head = ["run", "predicted top-1 % [95% band]", "measured (mean ± std)", "predicted - measured", "made before"]
    law = pred["law"] if isinstance(pred["law"], str) else ", ".join(f"{m}: {f}" for m, f in pred["law"].items())
    sha = ("no sha256 (made before predictions were hashed)" if "sha256" not in pred else
           f"sha256 {pred['sha256'][:12]}...: " + ("its predictions still match it" if pred["sha256_matches"]
                                                   else "its predictions NO LONGER match it: edited since made"))
    cut = (f", fitted only where a run saw its images at most {pred['fit_max_epochs']:g} times"
           if pred.get("fit_max_epochs") is not None else "")
    lines = [f"Made at {pred['made_at']} from {pred['fitted_on']} runs of the other rungs (law: {law}{cut}), for "
             f"`{pred['holdout']}` ({pred['holdout_params']:,} parameters); {sha}:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pred["predictions"]:
        lines.append(f"| {p['run']} | {p['predicted_top1']:.2f} [{p['low']:.2f}, {p['high']:.2f}] | "
                     + ("-" if p["measured_top1"] is None else f"{p['measured_top1']:.2f} ± {p['measured_std']:.2f}")
                     + " | " + ("-" if p["error_points"] is None else f"{p['error_points']:+.2f}")
                     + f" | {'yes' if p['made_before_runs'] else 'no'} |")
    return lines + [""]


def write_scaling_report(runs: list, sc, folder: Path, out: Path) -> Path:
    """runs.jsonl, fits.json and the plots into `out`, and a section of report.md; returns fits.json's
    path. The fit is `distill fit out/runs.jsonl`'s, with the study's held-out rung held out; runs.jsonl
    holds `scaling.prior_runs`'s rows too, first."""
    out = Path(out)
    rows = ladder_rows(runs, sc)
    table = fit_table(rows, runs, sc)
    result, fits = fit_rows(table, BOOTSTRAP, None, max_epochs=sc.fit_max_epochs, forms=sc.forms)
    result["prediction"] = check_prediction(folder, rows)
    durable.write_text(out / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in table), str(out / "runs.jsonl"))
    if result["prediction"] is not None:  # the study folder's copy stays as made; this one has the measurement
        durable.write_text(out / PREDICTION, json.dumps(result["prediction"], indent=2) + "\n", str(out / PREDICTION))
    figures = plots(result, fits, table, out)
    path = out / "fits.json"
    durable.write_text(path, json.dumps(result, indent=2) + "\n", str(path))
    text = markdown(result, figures, level=2)
    with open(out / "report.md", "a") as f:
        f.write("\n" + text + "\n### The prediction made before the held-out rung ran\n\n"
                + "\n".join(_prediction(result["prediction"])))
    return path
