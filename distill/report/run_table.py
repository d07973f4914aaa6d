"""A table of runs for `distill fit`: JSONL, one run a line, checked field by field.

Required: `method` (str), `params` (> 0), `images` (training images seen, > 0), `flops` (the
student's training FLOPs, > 0), `seed` (int), `top1` (final test top-1 in %, 0 < top1 < 100); a
held-out row may leave `top1` out or null: a planned run, predicted before it is trained.
Optional: `size` (a label), `unique_images` (the training set's size: `distill fit --max-epochs` needs
it on every fitted row), `budget` (the training FLOPs a study asked: where held-out
rows carry it, the naive baselines match fitted cells by it instead of by images), `test_loss`, `teacher_flops` (the teacher's whole
training cost, the same on every row of a method), `baseline` (the method this one is compared
with, the same on every row of a method), `holdout` (bool: kept out of the fit, predicted).
Anything else in a row is kept and ignored.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

from distill.errors import ConfigError

_NUMBERS = {"params": True, "images": True, "flops": True, "top1": True, "seed": True,
            "unique_images": False, "test_loss": False, "teacher_flops": False, "budget": False}


def _number(row: dict, key: str, where: str):
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: field {key!r} must be a finite number, got {v!r}")
    if key == "seed" and v != int(v):
        raise ConfigError(f"{where}: field 'seed' must be a whole number, got {v!r}")
    if key == "top1" and not 0 < v < 100:
        raise ConfigError(f"{where}: field 'top1' is final test top-1 in percent and must lie in (0, 100), got {v!r}")
    if key in ("params", "images", "flops", "unique_images", "budget") and v <= 0:
        raise ConfigError(f"{where}: field {key!r} must be positive, got {v!r}")
    if key == "teacher_flops" and v < 0:
        raise ConfigError(f"{where}: field 'teacher_flops' must be >= 0, got {v!r}")
    return int(v) if key == "seed" else float(v)


def check_row(row, where: str) -> dict:
    """One run, its fields checked and typed; `where` names it in the one-line error."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a run must be a JSON object, got {type(row).__name__}")
    planned = row.get("holdout") is True and row.get("top1") is None  # predicted before it is run
    for key, required in _NUMBERS.items():
        if row.get(key) is None:
            if required and not (planned and key == "top1"):
                raise ConfigError(f"{where}: missing field {key!r} (required: method, params, images, flops, "
                                  "seed, and top1 unless the row is a planned held-out run)")
            continue
        row[key] = _number(row, key, where)
    for key in ("method", "size", "baseline"):
        if key in row and row[key] is not None and (not isinstance(row[key], str) or not row[key]):
            raise ConfigError(f"{where}: field {key!r} must be a non-empty string, got {row[key]!r}")
    if not row.get("method"):
        raise ConfigError(f"{where}: missing field 'method'")
    if not isinstance(row.get("holdout", False), bool):
        raise ConfigError(f"{where}: field 'holdout' must be true or false, got {row['holdout']!r}")
    row["holdout"] = row.get("holdout", False)
    return row


def check_table(rows: List[dict], where: str) -> List[dict]:
    """Per-method facts that must agree across rows (one teacher, one baseline), and a baseline
    that names a method of the table."""
    if not rows:
        raise ConfigError(f"{where}: no runs")
    methods = {r["method"] for r in rows}
    for key in ("teacher_flops", "baseline"):
        for m in methods:
            values = {r.get(key) for r in rows if r["method"] == m} - {None}
            if len(values) > 1:
                found = ", ".join(map(str, sorted(values)))
                raise ConfigError(f"{where}: method {m!r} has rows with different {key} ({found}): one value per method")
    for r in rows:
        if r.get("baseline") and r["baseline"] not in methods:
            raise ConfigError(f"{where}: method {r['method']!r} names baseline {r['baseline']!r}, which no row "
                              f"has as its method ({', '.join(sorted(methods))})")
    return rows


def read_runs(path, holdout_params: Optional[float] = None) -> List[dict]:
    """The runs of a JSONL file, checked; with `holdout_params`, rows of that size are held out."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (RUNS is a JSONL file, one run a line; see docs/fit.md)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i}: not JSON ({e.msg} at column {e.colno})") from None
        rows.append(check_row(row, f"{path}:{i}"))
    if holdout_params is not None:
        if not any(r["params"] == holdout_params for r in rows):
            sizes = ", ".join(f"{p:g}" for p in sorted({r['params'] for r in rows}))
            raise ConfigError(f"--holdout-params {holdout_params:g}: no run has that many parameters ({sizes})")
        for r in rows:
            r["holdout"] = r["holdout"] or r["params"] == holdout_params
    return check_table(rows, str(path))
