"""What `distill study` refuses before any run starts: a run folder made with other settings than the
study asks now (`check_existing`), runs that would compute in another precision than its finished
ones (`check_precision`), and runs whose teacher or fork source has lost what they start from
(`check_weights`). A study's report compares its runs with each other, and a scaling study with
its prediction: each must be the run its file describes, all of them like with like."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from distill.config import may_differ_on_resume
from distill.recipe import load_config
from distill.errors import ConfigError
from distill.report import scaling
from distill.runs import records
from distill.runs.folder import differing_key, read_summary


def check_existing(jobs: list, path: Path) -> None:
    """Refuse, before any run starts, a run folder made with other settings than the study asks now.

    Here train.epochs counts too, although `train.resume=auto` may extend a finished run: a study's
    report compares its runs with each other (and a scaling study with its prediction), so each must be
    the run its file and command line describe. A run extended from 1 to 2 epochs followed a cosine
    that reached min_lr at epoch 1 and then restarted, not the schedule of a 2-epoch run, so the study
    neither counts nor extends it: a researcher who asks for 2 epochs gets 2-epoch runs or a refusal."""
    found = []
    for job in (j for j in jobs if (j.run_dir / records.CONFIG).exists()):
        cfg, summary = load_config(job.recipe, job.settings), read_summary(job.run_dir)
        # a finished run's epochs are the ones in its summary (config.yaml keeps those it started with)
        keep = may_differ_on_resume() - ({"train.epochs"} if summary is None else set())
        differs = differing_key(cfg, job.run_dir, keep)
        if differs is None and summary is not None:
            ran = [*summary.get("extended_from_epochs", []), summary.get("epochs", cfg.train.epochs)]
            if ran != [cfg.train.epochs]:
                differs = ("train.epochs", cfg.train.epochs, " extended to ".join(map(str, ran)))
        if differs is not None:
            found.append((job.run_dir, *differs))
    if found:
        run_dir, key, now, saved = found[0]
        more = f" (and {len(found) - 1} more run{'s' if len(found) > 2 else ''} of the study)" if found[1:] else ""
        raise ConfigError(f"study {path}: run {run_dir} was made with {key}={saved}{more}, but the study now asks "
                          f"{key}={now}, and a study only reports runs made with its settings; give the study "
                          f"another name: in {path}, or delete the runs made with other settings")


def check_precision(jobs: list, path: Path, sc) -> None:
    """Refuse, before any run starts, to add runs that `train.mixed_precision=auto` computes here in
    another precision than the study's finished runs of `auto` did (and the rows of `scaling.prior_runs`
    that record theirs). `auto` follows the hardware, bf16 on a CPU with AVX-512 BF16 and fp32 on one
    without, and a study spans sessions on whatever machine each gets: its cells would mix precisions,
    unsaid, where its report and its prediction compare them as like with like."""
    import torch

    from distill.precision import resolve, this_machine, word
    from distill.runs.launcher import accelerate_cpu

    pending = [j for j in jobs if not (j.run_dir / records.SUMMARY).exists()]
    auto = next((j for j in pending if load_config(j.recipe, j.settings).train.mixed_precision == "auto"), None)
    if auto is None:
        return
    cuda = torch.cuda.is_available() and not accelerate_cpu()
    here = resolve("auto", cuda)
    done = [(j.run_dir.name, read_summary(j.run_dir).get("mixed_precision")) for j in jobs
            if j not in pending and _requested(j.run_dir) == "auto"]
    prior = [(r.get("run"), r["mixed_precision"]) for r in (scaling.prior_rows(sc) if sc is not None else [])
             if r.get("mixed_precision")]
    other = [(run, p) for run, p in [*done, *prior] if p is not None and p != here]
    if other:
        run, saved = other[0]
        raise ConfigError(f"study {path}: {len(other)} of the runs it compares with ({run}, ...) computed "
                          f"train.mixed_precision=auto in {word(saved)}, but on this {this_machine(cuda)} its next "
                          f"ones ({auto.run_dir.name}, ...) would compute in {word(here)}, and its report compares "
                          f"them as like with like; go on where auto computes in {word(saved)} (docs/launching.md), "
                          f"or give the study another name: in {path}")


def _requested(run_dir: Path) -> Optional[str]:
    """The train.mixed_precision a finished run was given (its config.yaml), or None."""
    path = run_dir / records.CONFIG
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    return (cfg.get("train") or {}).get("mixed_precision")


def check_weights(jobs: list, path: Path) -> None:
    """Refuse, before any run starts, a run whose teacher or fork source is complete but no longer has
    what it starts from: the teacher's weights, or the checkpoint a fork branches at. A study folder
    rebuilt from its committed records (summaries and configs, weights gone with a machine) would
    otherwise fail each of those runs in turn."""
    from distill.models.weights import RUN_WEIGHTS

    for job in (j for j in jobs if not (j.run_dir / records.SUMMARY).exists()):
        given = dict(item.split("=", 1) for item in job.settings if "=" in item)  # the last of each key
        starts = {}  # what it starts from -> the run that made it
        if given.get("teacher.checkpoint") and (Path(given["teacher.checkpoint"]) / records.SUMMARY).exists():
            starts[Path(given["teacher.checkpoint"]) / RUN_WEIGHTS] = Path(given["teacher.checkpoint"])
        if "/" in given.get("train.resume", "") and job.needs is not None and (job.needs / records.SUMMARY).exists():
            starts[Path(given["train.resume"])] = job.needs  # a fork's checkpoint, its source complete
        for start, run in starts.items():
            if not start.exists():
                raise ConfigError(f"study {path}: {job.run_dir.name} starts from {start}, which is gone although "
                                  f"{run.name} is complete; move {run} aside and the study trains it again (the "
                                  "same run: same settings, same seed), or put the file back")
