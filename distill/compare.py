"""`distill compare RUN_DIR...`: finished runs side by side."""
from __future__ import annotations

import json
from pathlib import Path

from distill import runlog
from distill.config import ConfigError


def load_summaries(run_dirs) -> list:
    """summary.json of each finished run; an unfinished or unknown folder is an error."""
    runs = []
    for d in map(Path, run_dirs):
        path = d / runlog.SUMMARY
        if not path.exists():
            raise ConfigError(f"{d} has no {runlog.SUMMARY}: not a finished run (resume it with train.resume=auto)")
        runs.append(json.loads(path.read_text()))
    return runs


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(runs: list) -> str:
    """One row per run: accuracy, size, speed, time."""
    head = ["run", "student", "distillation", "best top-1 %", "final top-1 %", "params (M)",
            "train img/s", "wall (s)"]
    rows = []
    for r in runs:
        how = "-" if r.get("distill_type") in (None, "none") else f"{r['distill_type']} from {r.get('teacher')}"
        rows.append([r["name"], r.get("student", "-"), how, _fmt(r.get("best_top1"), ".2f"),
                     _fmt(r.get("final_top1"), ".2f"), _fmt(r.get("params", 0) / 1e6, ".2f"),
                     _fmt(r.get("train_img_per_s"), ".0f"), _fmt(r.get("wall_s"), ".0f")])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])
