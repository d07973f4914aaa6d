"""`distill fit RUNS --out DIR`: fit scaling laws to a table of runs; write fits.json, report.md and
the plots into DIR, all at once (a new folder, renamed into place when complete).

numpy, scipy and matplotlib only (no torch), so a refusal is instant. See docs/fit.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from distill.errors import ConfigError
from distill.report.fit_claims import analyse
from distill.report.fit_report import markdown, plots
from distill.report.fit_runs import HUBER_DELTA
from distill.report.run_table import read_runs
from distill.runs import durable

MIN_BOOTSTRAP = 10  # fewer refits give no 2.5th and 97.5th percentile worth printing


def fit_rows(rows: List[dict], bootstrap: int, students: Optional[int], seed: int = 0) -> tuple:
    """`analyse` plus the settings a reader needs; (result, fits). Refuses a table with no law."""
    result, fits = analyse(rows, bootstrap, students, seed)
    if not fits:
        reasons = "; ".join(f"{m}: {law['not_fitted']}" for m, law in result["laws"].items())
        raise ConfigError(f"no method could be fitted: {reasons}")
    result["settings"] = {"rows": len(rows), "held_out": sum(1 for r in rows if r.get("holdout")),
                          "bootstrap": bootstrap, "seed": seed, "huber_delta": HUBER_DELTA,
                          "students": students, "level": 0.95}
    return result, fits


def write_fit(result: dict, fits: dict, rows: List[dict], folder: Path, level: int = 1) -> List[Path]:
    """fits.json, report.md and the plots into an existing `folder`; returns the figures."""
    figures = plots(result, fits, rows, folder)
    (folder / "fits.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(result, figures, level))
    return figures


def run_fit(runs, out, holdout_params: Optional[float] = None, bootstrap: int = 400,
            students: Optional[int] = None, seed: int = 0) -> Path:
    """Check the arguments and the table, fit, and write DIR; returns DIR."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder: give a new folder (nothing is overwritten)")
    durable.check_folder_path(out, "--out")
    if bootstrap < MIN_BOOTSTRAP:
        raise ConfigError(f"--bootstrap {bootstrap}: at least {MIN_BOOTSTRAP} refits are needed for a 95% interval")
    if students is not None and students < 1:
        raise ConfigError(f"--students {students}: the teacher is amortised over at least 1 student")
    rows = read_runs(runs, holdout_params)
    result, fits = fit_rows(rows, bootstrap, students, seed)
    result["settings"]["runs"] = str(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    with durable.out_of_space(f"the fit into {out}", out.parent, cleanup=[tmp]):
        tmp.mkdir()
        write_fit(result, fits, rows, tmp)
        durable.replace_dir(tmp, out)
    return out
