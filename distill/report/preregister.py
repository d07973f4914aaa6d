"""Verifiable pre-registration of a scaling study's prediction for its held-out rung.

Once the study has written `prediction.json` (`scaling.predict_holdout`), `lock` writes
`prediction.lock.json` beside it, once: the prediction's sha256, the time of the lock (UTC) and the
runs it was fitted on. `verdict` then checks, from the runs' own summary.json (`started_at`,
`finished_at`, written by every run), that
- prediction.json is still the file that was locked (the same sha256),
- every fitted run had finished before the lock, and
- every held-out run started after it,
and says so in one line of the report. A lock can be forged by whoever can write the folder; what
it rules out is the honest mistake: a prediction re-made, or edited, after the held-out runs began.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional

from distill.report.run_table import read_runs
from distill.runs import durable, records
from distill.runs.checkpoint import utc_now

PREDICTION, LOCK = "prediction.json", "prediction.lock.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lock(folder: Path, fitted: Iterable[Path], prior: Optional[str] = None) -> Path:
    """Write `folder/prediction.lock.json` for `folder/prediction.json` and the finished runs of
    `fitted` (the runs it was fitted on), and of `prior` (`scaling.prior_runs`: a runs.jsonl fitted too),
    its sha256, run count and last `finished_at`; an existing lock is kept, as the prediction is."""
    folder = Path(folder)
    path = folder / LOCK
    if path.exists():
        return path
    names = sorted(Path(d).name for d in fitted if (Path(d) / records.SUMMARY).exists())
    data = {"prediction": PREDICTION, "sha256": sha256(folder / PREDICTION), "locked_at": utc_now(),
            "fitted_runs": names}
    if prior:
        rows = read_runs(prior)  # accepted when the study loaded: its extra fields (finished_at) are kept
        finished = [r.get("finished_at") for r in rows]
        data["prior_runs"] = {"file": str(prior), "sha256": sha256(Path(prior)), "runs": len(rows),
                              "last_finished_at": None if None in finished else max(finished, key=datetime.fromisoformat)}
    durable.write_text(path, json.dumps(data, indent=2) + "\n", f"prediction lock {path}")
    return path


def _summary(run_dir: Path) -> dict:
    path = Path(run_dir) / records.SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def verdict(folder: Path, held_out: Iterable[Path]) -> str:
    """One line: whether the prediction in `folder` was made, unchanged, before every finished run of
    `held_out` started and after every run it was fitted on finished."""
    folder, held_out = Path(folder), [Path(d) for d in held_out]
    if not (folder / PREDICTION).exists():
        return "Pre-registration: no prediction.json in the study folder, so nothing to verify."
    if not (folder / LOCK).exists():
        return f"Pre-registration NOT verifiable: prediction.json has no {LOCK} (made before locks were kept)."
    locked = json.loads((folder / LOCK).read_text())
    at, now = datetime.fromisoformat(locked["locked_at"]), sha256(folder / PREDICTION)
    if now != locked["sha256"]:
        return (f"Pre-registration NOT verified: prediction.json's sha256 is {now[:12]}..., not the "
                f"{locked['sha256'][:12]}... locked at {locked['locked_at']}: it changed after the lock.")
    fitted = {name: _summary(folder / name).get("finished_at") for name in locked["fitted_runs"]}
    prior = locked.get("prior_runs")
    if prior:  # an earlier study's runs, fitted too: their latest finish stands for them all
        fitted[f"{prior['runs']} prior runs ({Path(prior['file']).name})"] = prior["last_finished_at"]
    count = len(locked["fitted_runs"]) + (prior["runs"] if prior else 0)
    held = {d.name: _summary(d).get("started_at") for d in held_out if (d / records.SUMMARY).exists()}
    unknown = sorted(n for n, t in {**fitted, **held}.items() if t is None)
    if unknown:
        return (f"Pre-registration NOT verifiable: {len(unknown)} run(s) record no start or finish time "
                f"(made before runs recorded them, or missing): {', '.join(unknown[:3])}.")
    late = sorted(n for n, t in fitted.items() if datetime.fromisoformat(t) > at)
    early = sorted(n for n, t in held.items() if datetime.fromisoformat(t) < at)
    if late or early:
        what = [f"fitted run {n} finished at {fitted[n]}" for n in late] + \
               [f"held-out run {n} started at {held[n]}" for n in early]
        return f"Pre-registration NOT verified: {'; '.join(what[:3])}, after or before the lock at {locked['locked_at']}."
    if not held:
        return (f"Pre-registration: prediction.json (sha256 {now[:12]}...) locked at {locked['locked_at']} after "
                f"its {count} fitted runs finished; no held-out run has finished yet.")
    return (f"Pre-registration verified: prediction.json (sha256 {now[:12]}...) is unchanged since its lock at "
            f"{locked['locked_at']}, after its {count} fitted runs finished and before each of the "
            f"{len(held)} held-out runs started (their summary.json's finished_at and started_at).")
