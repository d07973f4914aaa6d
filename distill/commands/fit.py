"""`distill fit RUNS --out DIR`: fit scaling laws to a table of runs; write fits.json, report.md and
the plots into DIR, all at once (a new folder, renamed into place when complete).

numpy, scipy and matplotlib only (no torch), so a refusal is instant. See docs/fit.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from distill.errors import ConfigError
from distill.report.backtest import backtest as run_backtest, markdown as backtest_markdown
from distill.report.fit_report import check_declared, fit_rows, write_fit
from distill.report.run_table import read_runs
from distill.runs import durable

MIN_BOOTSTRAP = 10  # fewer refits give no 2.5th and 97.5th percentile worth printing


def declared_forms(forms: Sequence[str], rows: List[dict]) -> Dict[str, str]:
    """`--form` values, `METHOD=LAW` or `LAW` (every method's), as {method: law}."""
    out: Dict[str, str] = {}
    for value in forms:
        method, _, law = value.rpartition("=")
        for m in ([method] if method else dict.fromkeys(r["method"] for r in rows)):
            out[m] = law
    return out


def run_fit(runs, out, holdout_params: Optional[float] = None, bootstrap: int = 400,
            students: Optional[int] = None, seed: int = 0, max_epochs: Optional[float] = None,
            forms: Sequence[str] = (), backtest: Optional[float] = None) -> Path:
    """Check the arguments and the table, fit, and write DIR; returns DIR. With `backtest` (a ratio), the
    table is fitted once per size it can predict from sizes that ratio below (distill/report/backtest.py):
    DIR gets backtest.json and backtest.md instead."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder: give a new folder (nothing is overwritten)")
    durable.check_folder_path(out, "--out")
    if bootstrap < MIN_BOOTSTRAP:
        raise ConfigError(f"--bootstrap {bootstrap}: at least {MIN_BOOTSTRAP} refits are needed for a 95% interval")
    if students is not None and students < 1:
        raise ConfigError(f"--students {students}: the teacher is amortised over at least 1 student")
    if backtest is not None and holdout_params is not None:
        raise ConfigError("--backtest holds out every size it can predict in turn: leave out --holdout-params")
    rows = read_runs(runs, holdout_params)
    declared = declared_forms(forms, rows)
    check_declared(declared, list(dict.fromkeys(r["method"] for r in rows)), "--form ")
    if backtest is not None:
        result = run_backtest(rows, backtest, bootstrap, seed, max_epochs, declared)
        result["settings"] = {"runs": str(runs), "bootstrap": bootstrap, "seed": seed, "max_epochs": max_epochs,
                              "forms": declared}
    else:
        result, fits = fit_rows(rows, bootstrap, students, seed, max_epochs, declared)
        result["settings"]["runs"] = str(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    with durable.out_of_space(f"the fit into {out}", out.parent, cleanup=[tmp]):
        tmp.mkdir()
        if backtest is not None:
            (tmp / "backtest.json").write_text(json.dumps(result, indent=2) + "\n")
            (tmp / "backtest.md").write_text(backtest_markdown(result))
        else:
            write_fit(result, fits, rows, tmp)
        durable.replace_dir(tmp, out)
    return out
