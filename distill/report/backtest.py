"""Every extrapolation a table allows: `distill fit RUNS --backtest R` (docs/fit.md).

One held-out test says little about a law: its cells are few and its size is one. A backtest asks the
same question at every size T of the table that lies at least R times beyond enough smaller ones: fit
each method on the rows of sizes <= T / R only (as a study would, its form chosen by leaving one size
out unless declared), predict the rows at T, and score the law beside persistence and the log-linear
line exactly as a study's held-out rung is scored (`fit_claims.analyse`). The sizes between T / R and
T, and those above T, are left out of that fit. Rolling-origin evaluation, as forecasters judge a
model; Besiroglu et al. 2024 ask the same of a law's intervals.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from distill.errors import ConfigError
from distill.report.fit_claims import GOAL_POINTS, analyse, epochs_of
from distill.report.fit_report import check_cut

MIN_SIZES = 3  # a law is fitted on at least 3 sizes (4 to choose its form: docs/fit.md)


def targets(rows: List[dict], ratio: float, max_epochs: Optional[float] = None) -> List[float]:
    """The sizes with measured rows that some method can be predicted at: at least MIN_SIZES of its
    sizes lie at or below T / ratio (counting only the runs a fit keeps under `max_epochs`)."""
    measured = [r for r in rows if r.get("top1") is not None]
    fitted = [r for r in measured if _kept(r, max_epochs)]
    out = []
    for t in sorted({r["params"] for r in measured}):
        at = {r["method"] for r in measured if r["params"] == t}
        if any(len({r["params"] for r in fitted if r["method"] == m and r["params"] <= t / ratio}) >= MIN_SIZES
               for m in at):
            out.append(t)
    return out


def _kept(row: dict, max_epochs: Optional[float]) -> bool:
    """Whether a fit keeps the run under `--max-epochs` (as `fit_claims.analyse` cuts)."""
    return max_epochs is None or epochs_of(row) <= max_epochs * (1 + 1e-9)


def backtest(rows: List[dict], ratio: float, bootstrap: int, seed: int = 0, max_epochs: Optional[float] = None,
             forms: Optional[Dict[str, str]] = None) -> dict:
    """{"ratio", "gaps": one per target size (its fit's laws, predictions and held-out errors), "summary":
    per method over the gaps}. A row's own `holdout` flag is ignored: every measured row is data."""
    if ratio < 1:
        raise ConfigError(f"--backtest {ratio:g}: the held-out size must be at least as large as the fitted ones "
                          "(a ratio >= 1; the issue's test uses 4)")
    check_cut([dict(r, holdout=False) for r in rows if r.get("top1") is not None], max_epochs)  # all are data
    found = targets(rows, ratio, max_epochs)
    if not found:
        raise ConfigError(f"--backtest {ratio:g}: no size of the table has {MIN_SIZES} sizes of its method at or below "
                          f"1/{ratio:g} of it; give a smaller ratio or a table with more sizes")
    gaps = []
    for t in found:
        table = [dict(r, holdout=r["params"] == t) for r in rows
                 if r.get("top1") is not None and (r["params"] == t or r["params"] <= t / ratio)]
        result, _ = analyse(table, bootstrap, None, seed, max_epochs, forms)
        fitted = max(r["params"] for r in table if not r["holdout"] and _kept(r, max_epochs))
        preds = result["predictions"]
        gaps.append({"target": t, "fitted_up_to": fitted, "ratio": t / fitted,
                     "held": sorted({r["method"] for r in table if r["holdout"]}),
                     "laws": {m: {"form": law["form"], "sizes": len(law.get("sizes", [])),
                                  **({"not_fitted": law["not_fitted"]} if "not_fitted" in law else {})}
                              for m, law in result["laws"].items()},
                     "predictions": preds, "errors": {k: e for k, e in result["holdout_errors"].items() if e["cells"]},
                     "inside": sum(p["low"] <= p["measured_top1"] <= p["high"] for p in preds)})
    return {"ratio": ratio, "gaps": gaps, "summary": summary(gaps)}


def summary(gaps: List[dict]) -> Dict[str, dict]:
    """Per method (and `all`): over the gaps that predicted it, the mean of their mean absolute errors
    (law, persistence, log-linear), and in how many gaps the law met each part of the issue's test."""
    out = {}
    for key in dict.fromkeys(k for g in gaps for k in g["errors"]):
        mine = [g["errors"][key] for g in gaps if key in g["errors"]]
        mean = {name: sum(e[name] for e in mine if e[name] is not None) / max(1, sum(e[name] is not None for e in mine))
                for name in ("predicted", "persistence", "loglinear")}
        out[key] = {"gaps": len(mine), **mean,
                    "within_1": sum(e["predicted"] <= GOAL_POINTS for e in mine),
                    "below_persistence": sum(e["persistence"] is not None and e["predicted"] < e["persistence"]
                                             for e in mine),
                    "below_loglinear": sum(e["loglinear"] is not None and e["predicted"] < e["loglinear"]
                                           for e in mine)}
    return out


def markdown(result: dict) -> str:
    """backtest.md: a row per gap and method, then the summary."""
    lines = [f"# Backtest: every size predicted from the sizes at least {result['ratio']:g}x below it", "",
             "Each row fits the method on the sizes at or below the target over the ratio and predicts the target's "
             "cells; mean absolute error in top-1 points over those cells (law, persistence, log-linear), and how "
             "many of the cells' measured means lie inside the law's 95% prediction interval.", "",
             "| target params | fitted up to | ratio | method | law (sizes) | cells | law | persistence | log-linear |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in result["gaps"]:
        for method, e in g["errors"].items():
            law = g["laws"].get(method, {})
            form = f"{law['form']} ({law['sizes']})" if law.get("form") else "-"
            lines.append(f"| {g['target']:.4g} | {g['fitted_up_to']:.4g} | {g['ratio']:.2f} | {method} | {form} | "
                         f"{e['cells']} | {e['predicted']:.2f} | {_g(e['persistence'])} | {_g(e['loglinear'])} |")
        for method in (m for m in g["held"] if m not in g["errors"]):
            lines.append(f"| {g['target']:.4g} | {g['fitted_up_to']:.4g} | {g['ratio']:.2f} | {method} | not fitted: "
                         f"{g['laws'][method].get('not_fitted', 'no law')} | | | | |")
        lines.append(f"| | | | inside their 95% PI | | {g['inside']} of {len(g['predictions'])} | | | |")
    lines += ["", f"| method | gaps | mean law | mean persistence | mean log-linear | law <= {GOAL_POINTS:.1f} | law below "
              "persistence | law below log-linear |", "|---|---|---|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        lines.append(f"| {key} | {s['gaps']} | {s['predicted']:.2f} | {s['persistence']:.2f} | {s['loglinear']:.2f} | "
                     f"{s['within_1']} | {s['below_persistence']} | {s['below_loglinear']} |")
    return "\n".join(lines) + "\n"


def _g(v) -> str:
    return "-" if v is None else f"{v:.2f}"
