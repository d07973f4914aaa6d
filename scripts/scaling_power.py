"""The power of every committed held-out test of the CPU ladder (docs/scaling_power/, issue 32): each study's
table refitted by `distill fit` exactly as its committed report was (its settings: bootstrap, seed, epochs cut,
declared forms), so the predictions and intervals are the committed ones (how far each moved, from the code
of the report's day and the CPU's rounding, is kept as `moved_from_committed`), and beside them
`holdout_power` (distill/report/fit_claims.py): the chance that a law right in form, fitted on that table,
would have met the 1.0-point bar on those cells. Then one test of how the power moves with the fitted
table's seeds: v7's table refitted on two of its three seeds per cell (the held-out cells keep three).

    python scripts/scaling_power.py   # refits in 2 processes, ~23 min here; writes docs/scaling_power/power.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.commands.fit import run_fit  # noqa: E402
from distill.report.run_table import read_runs  # noqa: E402
from distill.runs import durable  # noqa: E402

OUT = ROOT / "docs/scaling_power/power.json"
STUDIES = ("scaling_cpu", "scaling_cpu_v2", "scaling_cpu_v3", "scaling_cpu_v4", "scaling_cpu_v5", "scaling_cpu_v6",
           "scaling_cpu_v6_fp32", "scaling_cpu_v7a", "scaling_cpu_v7")
SUBSAMPLED = ("scaling_cpu_v7", (0, 1))  # the study, and the seeds its fitted cells keep


def committed(study: str) -> tuple:
    """(runs.jsonl, fits.json) of a study's committed report (the first study's fit lives in fit/)."""
    folder = ROOT / "docs" / study
    report = folder / "report" if (folder / "report/fits.json").exists() else folder / "fit"
    runs = report / "runs.jsonl" if (report / "runs.jsonl").exists() else folder / "runs.jsonl"
    return runs, json.loads((report / "fits.json").read_text())


def refit(study: str, keep_seeds=None) -> dict:
    runs, fits = committed(study)
    s = fits["settings"]
    with tempfile.TemporaryDirectory() as tmp:
        if keep_seeds is not None:  # fitted rows of those seeds only; every held-out row
            rows = [r for r in read_runs(runs) if r.get("holdout") or r["seed"] in keep_seeds]
            runs = Path(tmp) / "runs.jsonl"
            runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = run_fit(runs, Path(tmp) / "fit", bootstrap=s["bootstrap"], seed=s["seed"], max_epochs=s.get("max_epochs"),
                      forms=[f"{m}={f}" for m, f in s["forms"].items()])
        refitted = json.loads((out / "fits.json").read_text())
    cells = [(p["method"], p["params"], p["images"]) for p in refitted["predictions"]]
    if cells != [(p["method"], p["params"], p["images"]) for p in fits["predictions"]]:
        raise SystemExit(f"error: {study}: the refit predicts other cells than its committed fits.json")
    moved = max(abs(p[k] - c[k]) for p, c in zip(refitted["predictions"], fits["predictions"])
                for k in ("predicted_top1", "low", "high"))  # the code of the report's day, and the CPU's rounding
    held = max(p["params"] for p in refitted["predictions"])
    fitted = max(max(law.get("sizes") or [0]) for law in refitted["laws"].values())
    return {"study": study, "keep_seeds": keep_seeds, "moved_from_committed": moved, "ratio": held / fitted,
            "predictions": refitted["predictions"], "cells": len(refitted["predictions"]),
            "inside": sum(p["low"] <= p["measured_top1"] <= p["high"] for p in refitted["predictions"]),
            "widths": [p["high"] - p["low"] for p in refitted["predictions"]],
            "errors": refitted["holdout_errors"]["all"], "power": refitted["holdout_power"]["all"]}


def shrink_for(widths, chance: float = 0.8, goal: float = 1.0, draws: int = 100_000) -> float:
    """The factor every cell's interval must shrink by for a right law to meet `goal` with `chance`: each cell's
    error normal with the standard deviation its 95% interval implies (width / 3.92), cells independent; an
    approximation of the refits' joint draws, for a what-if only."""
    z = np.abs(np.random.default_rng(0).standard_normal((draws, len(widths)))) * np.array(widths) / 3.92
    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisect: the chance falls as the errors scale up
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(mid * z.mean(axis=1) <= goal) >= chance else (lo, mid)
    return lo


def seeds_for(rows: list) -> dict:
    """How the intervals narrowed with seeds in v7's refit on 2 of 3 (the exponent g of width ~ seeds^-g), and
    the seeds per cell that exponent asks for v7's intervals to give a right law a 0.8 chance."""
    full = next(r for r in rows if r["study"] == SUBSAMPLED[0] and r["keep_seeds"] is None)
    fewer = next(r for r in rows if r["keep_seeds"] is not None)
    g = float(np.log(np.mean(fewer["widths"]) / np.mean(full["widths"])) / np.log(3 / len(SUBSAMPLED[1])))
    shrink = shrink_for(full["widths"])
    return {"exponent": g, "shrink_for_0.8": shrink, "seeds_for_0.8": 3 * shrink ** (-1 / g) if g > 0 else None}


def write(rows: list) -> dict:
    """power.json from the refits' rows, and its table printed."""
    table = {"studies": rows, "seeds": seeds_for(rows)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    durable.write_text(OUT, json.dumps(table, indent=2) + "\n", f"the power table {OUT}")
    print("| study | ratio | cells | inside | law | persistence | log-linear | right law's expected MAE | P(MAE <= 1) "
          "| P(as large) |")
    for r in rows:
        e, p = r["errors"], r["power"]
        print(f"| {r['study']}{'' if r['keep_seeds'] is None else ' seeds ' + str(r['keep_seeds'])} | {r['ratio']:.2f} "
              f"| {r['cells']} | {r['inside']} | {e['predicted']:.2f} | {e['persistence']:.2f} | {e['loglinear']:.2f} "
              f"| {p['expected_mae']:.2f} | {p['p_within_goal']:.2f} | {p['p_as_large']:.2f} |")
    print(table["seeds"])
    return table


def main() -> None:
    with Pool(2) as pool:
        write(pool.starmap(refit, [(s, None) for s in STUDIES] + [SUBSAMPLED]))


if __name__ == "__main__":
    main()
