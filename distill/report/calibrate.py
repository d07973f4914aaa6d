"""`distill study FILE --dry-run --calibrate`: hours from a short timed run per size, start-up, data
path and evaluation included; and, in the study's report, that estimate against the measured time.

Per student (size, precision, batch; a distilled run is counted as its student's plain run plus its
teacher's counted forwards, live or recording the cache, at the teacher's forward rate timed here), one `distill train` of 3 epochs of
`CAL_BATCHES` batches, evaluated after the last only, in a temporary folder. From its metrics.jsonl:
seconds an image (the quicker of epochs 1 and 2, neither evaluated), one evaluation (epoch 3's time less that) and
start-up (the process's wall time less its epochs': imports, data, model, checkpoint, summary). A run
is then start-up + its own images x seconds an image + its evaluations x one evaluation. The dry run
writes `estimate.json` into the study folder, which the report compares with the study's span (its
first run's start to its last run's finish) and the runs' own training loops (metrics' epoch_s).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from distill.recipe import load_config
from distill.report.estimate import split_shape
from distill.runs import durable, records
from distill.runs.checkpoint import checkpoint_step, utc_now

CAL_BATCHES = 10  # batches an epoch of the timed run: long enough to be warm, short enough for a dry run
ESTIMATE = "estimate.json"
SHORT = ["train.epochs=3", "train.eval_every=3", "train.checkpoint_every=1000", "train.log_with=[]"]


def _key(cfg) -> str:
    return json.dumps([vars(cfg.student), cfg.train.mixed_precision, cfg.data.batch_size, cfg.data.img_size,
                       cfg.data.test_subset], default=str, sort_keys=True)


def time_run(job, cfg, folder: Path) -> dict:
    """One short timed run of `job`'s student (its settings, shortened) in `folder`: its rates."""
    keep = [s for s in job.settings if s.split("=", 1)[0] not in ("name", "output_dir", "train.resume")]
    subset = cfg.data.batch_size * CAL_BATCHES
    cmd = [sys.executable, "-m", "distill", "train", job.recipe, *keep, *SHORT, f"data.train_subset={subset}",
           "name=calibrate", f"output_dir={folder}", "train.resume=auto"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    epochs = [json.loads(x) for x in (folder / "calibrate" / records.METRICS).read_text().splitlines() if x.strip()]
    images = json.loads((folder / "calibrate" / records.SUMMARY).read_text())["epoch_images"]
    train_s = min(epochs[0]["epoch_s"], epochs[1]["epoch_s"])  # the quicker of two: a shared CPU's bursts inflate one
    return {"run": job.run_dir.name, "s_per_image": train_s / images, "eval_s": max(epochs[2]["epoch_s"] - train_s, 0.0),
            "startup_s": max(wall - sum(e["epoch_s"] for e in epochs), 0.0), "wall_s": wall}


def teacher_seconds_per_flop(cfg, classes: int, chans: int) -> float:
    """Seconds a FLOP of the teacher's forward (no grad, the run's precision) on a batch of random images:
    what a distilled run's counted teacher FLOPs (live, or recording its cache) cost here."""
    import torch

    from distill.models import create_model
    from distill.models.cost import forward_gflops
    from distill.precision import resolve

    size = cfg.teacher.img_size or cfg.data.img_size
    model = create_model(cfg.teacher.model, num_classes=classes, in_chans=chans,
                         small_input_stem=cfg.teacher.small_input_stem).eval()
    x = torch.randn(cfg.data.batch_size, chans, size, size)
    precision = resolve(cfg.train.mixed_precision, cuda=False)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            model(x)
    return (time.perf_counter() - t0) / 3 / (forward_gflops(model, (chans, size, size)) * 1e9 * len(x))


def _evals(cfg, start_epoch: int) -> int:
    every, n = cfg.train.eval_every, cfg.train.epochs
    return sum(1 for e in range(start_epoch, n) if (e + 1) % every == 0 or e == n - 1)


def calibrate(jobs, rows: List[dict], folder: Path) -> List[dict]:
    """`rows` (estimate.estimate's) with `hours_calibrated`, from one timed run per student; writes
    `folder/estimate.json`. A student is timed from its first job that needs no teacher."""
    cfgs = [load_config(j.recipe, [s for s in j.settings if not s.startswith("train.resume=")]) for j in jobs]
    timed: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="distill-calibrate-") as tmp:
        for i, (job, cfg) in enumerate(zip(jobs, cfgs)):
            if _key(cfg) not in timed and cfg.distill.type == "none":
                print(f"== calibrate: {job.run_dir.name}", flush=True)
                t = timed[_key(cfg)] = time_run(job, cfg, Path(tmp) / str(i))
                print(f"== calibrate: {1e3 * t['s_per_image']:.3f} ms an image, {t['eval_s']:.1f} s an evaluation, "
                      f"{t['startup_s']:.1f} s start-up", flush=True)
    teachers: Dict[str, float] = {}
    for job, cfg, row in zip(jobs, cfgs, rows):
        t = timed.get(_key(cfg))
        if t is None:  # a student only ever distilled: nothing timed it
            continue
        resume = next((s.split("=", 1)[1] for s in job.settings if s.startswith("train.resume=")), "")
        start = checkpoint_step(resume) * cfg.data.batch_size // max(row["images_scratch"] // cfg.train.epochs, 1)
        seconds = t["startup_s"] + row["images"] * t["s_per_image"] + _evals(cfg, start) * t["eval_s"]
        if row["teacher_flops"]:  # the teacher's forwards the run makes (live, or recording the cache)
            model = cfg.teacher.model
            if model not in teachers:
                data = OmegaConf.to_yaml(OmegaConf.structured(cfg.data))
                teachers[model] = teacher_seconds_per_flop(cfg, *split_shape(data, None)[1:])
            seconds += row["teacher_flops"] * teachers[model]
        row["hours_calibrated"] = seconds / 3600
    total = sum(r.get("hours_calibrated", 0.0) for r in rows)
    Path(folder).mkdir(parents=True, exist_ok=True)  # the study's folder: the report reads the estimate there
    durable.write_text(Path(folder) / ESTIMATE, json.dumps({
        "made_at": utc_now(), "calibration_batches": CAL_BATCHES, "timed": list(timed.values()),
        "runs": {r["run"]: r.get("hours_calibrated") for r in rows}, "total_hours": total}, indent=2) + "\n",
        f"estimate {Path(folder) / ESTIMATE}")
    return rows


def _own_loop_s(run_dir: Path) -> Optional[float]:
    """The run's training loops in seconds (metrics.jsonl's epoch_s); None where the folder keeps no
    metrics.jsonl (a study rebuilt from its committed summary.json and config.yaml)."""
    path = Path(run_dir) / records.METRICS
    if not path.exists():
        return None
    return sum(json.loads(x).get("epoch_s", 0.0) for x in path.read_text().splitlines() if x.strip())


def report_lines(folder: Path, run_dirs: List[Path]) -> List[str]:
    """The report's lines on the estimate: the dry run's calibrated hours against the measured ones."""
    path = Path(folder) / ESTIMATE
    done = [Path(d) for d in run_dirs if (Path(d) / records.SUMMARY).exists()]
    if not path.exists() or not done:
        return [] if done else ["No runs: nothing to compare the estimate with."]
    est = json.loads(path.read_text())
    summaries = [json.loads((d / records.SUMMARY).read_text()) for d in done]
    starts = [datetime.fromisoformat(s["started_at"]) for s in summaries if s.get("started_at")]
    ends = [datetime.fromisoformat(s["finished_at"]) for s in summaries if s.get("finished_at")]
    span = (max(ends) - min(starts)).total_seconds() / 3600 if starts and ends else None
    loops = [s for s in map(_own_loop_s, done) if s is not None]
    planned = sum(v or 0.0 for k, v in est["runs"].items() if (Path(folder) / k) in done)
    lines = ["", "## Estimate against measured time", "",
             f"The dry run's calibrated estimate ({est['made_at']}): {est['total_hours']:.2f} h for "
             f"{len(est['runs'])} runs; {planned:.2f} h for the {len(done)} runs finished."]
    if span is not None:
        own = f"{sum(loops) / 3600:.2f} h" if loops else "not in these records (no metrics.jsonl)"
        if loops and len(loops) < len(done):
            own += f" in the {len(loops)} of {len(done)} runs that keep metrics.jsonl"
        lines.append(f"Measured: {span:.2f} h from the first run's start to the last run's finish "
                     f"(estimate / measured = {planned / span:.2f}); the runs' own training loops "
                     f"(metrics' epoch_s, evaluations included, start-up not): {own}.")
    return lines
