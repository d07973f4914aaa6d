"""`distill study FILE [key=value ...]`: a set of runs, crossed with seeds, then one report.

A study file (YAML, data only) names variants: a recipe, optional overrides and seeds, and
optionally `teacher:`, the variant whose run is this one's teacher (its folder becomes
`teacher.checkpoint`). Runs go in order, each as `distill train` in its own process, named
`<variant>_s<seed>` under `<output_dir>/<study name>/`. A run that already has its summary is
skipped; a failed run is reported and the others go on (its dependents are skipped). Command-line
overrides apply to every run, last, so one file serves a laptop (shrunk) and a cluster.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import ConfigError
from distill.report.compare import load_runs, write_report
from distill.runs import records

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StudyRun:
    recipe: str = MISSING  # relative to the study file
    seeds: Optional[List[int]] = None  # None: the study's seeds
    overrides: List[str] = field(default_factory=list)
    teacher: Optional[str] = None  # variant whose first seed's run is the teacher


@dataclass
class Study:
    name: str = MISSING
    output_dir: str = "runs/studies"
    seeds: List[int] = field(default_factory=lambda: [0])
    overrides: List[str] = field(default_factory=list)  # for every run
    launcher: str = "python"  # python: one process; launch: ./launch.sh (one process per GPU)
    runs: Dict[str, StudyRun] = field(default_factory=dict)


@dataclass
class Job:
    variant: str
    seed: int
    run_dir: Path
    cmd: List[str]
    needs: Optional[Path] = None


def load_study(path: Path) -> Study:
    if not path.is_file():
        raise ConfigError(f"study {path} not found; see recipes/studies/")
    try:
        study: Study = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Study), OmegaConf.load(path)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"study {path}: {getattr(e, 'full_key', '') or ''}: "
                          f"{str(getattr(e, 'msg', e)).splitlines()[0]}") from None
    if study.launcher not in ("python", "launch"):
        raise ConfigError(f"study {path}: launcher={study.launcher!r} is not one of: python, launch")
    for variant, run in study.runs.items():
        if run.teacher is not None and run.teacher not in study.runs:
            raise ConfigError(f"study {path}: runs.{variant}.teacher={run.teacher!r} names no variant of the study")
        if not (path.parent / run.recipe).is_file():
            raise ConfigError(f"study {path}: runs.{variant}.recipe={run.recipe} not found")
    return study


def plan(path: Path, overrides=()) -> List[Job]:
    """Every run of the study, in file order, with its command line."""
    study = load_study(path)
    folder = Path(study.output_dir) / study.name
    first_run = {v: folder / f"{v}_s{(r.seeds or study.seeds)[0]}" for v, r in study.runs.items()}
    jobs = []
    for variant, run in study.runs.items():
        for seed in run.seeds or study.seeds:
            run_dir = folder / f"{variant}_s{seed}"
            needs = first_run[run.teacher] if run.teacher else None
            extra = [f"teacher.checkpoint={needs}"] if needs else []
            settings = [*study.overrides, *run.overrides, *extra, *overrides,
                        f"name={run_dir.name}", f"output_dir={folder}", f"seed={seed}", "train.resume=auto"]
            recipe = str((path.parent / run.recipe).resolve())
            launcher = [str(ROOT / "launch.sh")] if study.launcher == "launch" else [sys.executable, "-m", "distill",
                                                                                    "train"]
            jobs.append(Job(variant, seed, run_dir, [*launcher, recipe, *settings], needs))
    return jobs


def run_study(path: Path, overrides=(), report_dir: Optional[Path] = None) -> int:
    """Run what is not complete yet, then write the report. Returns 0 if every run is complete."""
    jobs = plan(path, overrides)
    status = {}
    for job in jobs:
        label = f"{job.variant} seed {job.seed}"
        if (job.run_dir / records.SUMMARY).exists():
            status[job.run_dir] = "complete (skipped)"
        elif job.needs is not None and not (job.needs / records.SUMMARY).exists():
            status[job.run_dir] = f"not run: its teacher {job.needs.name} is not complete"
        else:
            print(f"== study: {label}: {' '.join(job.cmd[-4:])}", flush=True)
            rc = subprocess.run(job.cmd, cwd=Path.cwd()).returncode
            done = (job.run_dir / records.SUMMARY).exists()
            status[job.run_dir] = "ran" if done else f"FAILED (exit {rc})"
        print(f"== study: {label}: {status[job.run_dir]}", flush=True)
    finished = [j.run_dir for j in jobs if (j.run_dir / records.SUMMARY).exists()]
    if finished:
        out = report_dir or (jobs[0].run_dir.parent / "report")
        print(f"== study: report in {write_report(load_runs(finished), out)}")
    failed = [str(d) for d, s in status.items() if not (d / records.SUMMARY).exists()]
    for d in failed:
        print(f"== study: incomplete: {d}: {status[Path(d)]}", file=sys.stderr)
    return 0 if not failed else 1
