"""`distill study FILE [key=value ...]`: a set of runs, crossed with seeds, then one report.

A study file (YAML, data only) names variants: a recipe, optional overrides and seeds, and
optionally `teacher:`, the variant whose run is this one's teacher (its folder becomes
`teacher.checkpoint`). Runs go in file order, a teacher before its students, each as `distill train`
in its own process, named `<variant>_s<seed>` under `<output_dir>/<study name>/`. A run that already
has its summary is skipped, once its settings are found to be the study's (`study_checks`); a
failed run is reported and the others go on (its dependents are skipped). Command-line overrides apply
to every run, last, so one file serves a laptop (shrunk) and a cluster.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import ConfigError
from distill.report import calibrate, data_axis, ladder, lr_sweep, preregister, scaling, teacher_axis
from distill.report.data_axis import DataAxis
from distill.report.teacher_axis import TeacherAxis
from distill.report.baselines import study_baselines
from distill.report.scaling import ladder_variant
from distill.report.compare import load_runs, write_report
from distill.report.fit_report import check_max_epochs
from distill.report.study_checks import check_existing, check_precision, check_weights
from distill.runs import records
from distill.runs.launcher import run_passing_stops

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StudyRun:
    recipe: str = MISSING  # relative to the study file
    seeds: Optional[List[int]] = None  # None: the study's seeds
    overrides: List[str] = field(default_factory=list)
    teacher: Optional[str] = None  # variant whose first seed's run is the teacher
    baseline: Optional[str] = None  # the plain variant its gain is measured against (None: found, see baselines.py)
    declared_differences: List[str] = field(default_factory=list)  # keys outside the method's it may differ in
    fork: Optional[str] = None  # "<variant>:<step>": starts from that variant's same-seed checkpoint (docs/ladder.md)
    sizes: Optional[List[str]] = None  # in scaling.methods: the sizes it runs at (None: every size)


@dataclass
class Scaling:
    """A scaling ladder: every (method, size, budget) becomes the variant `<method>_<size>_e<epochs>`,
    run for every seed. Runs of the held-out rung go last, after the prediction for them is written."""

    sizes: Dict[str, List[str]] = field(default_factory=dict)  # rung -> overrides (student.embed_dim=..., ...)
    epochs: List[int] = field(default_factory=list)  # budgets, as epochs over the training set
    budgets: List[float] = field(default_factory=list)  # or in training FLOPs, as cooldown forks (docs/ladder.md)
    methods: Dict[str, StudyRun] = field(default_factory=dict)  # label -> recipe, overrides, teacher
    holdout: Optional[str] = None  # the rung predicted before it runs; None: the last (largest)
    gpu: Optional[str] = None  # docs/bench/<gpu>/: the dry run also estimates that GPU's hours
    train_images: Optional[int] = None  # the training split's size, for a dry run where the data is absent
    processes: int = 1  # processes a run uses (GPUs), for the dry run's images per epoch
    lr_sweep: List[float] = field(default_factory=list)  # rates tried per size before its runs (lr_sweep.py)
    lr_sweep_widen: int = 0  # rates added, a grid step each, beyond a best rate on the grid's edge
    lr_sweep_methods: List[str] = field(default_factory=list)  # methods swept on themselves too (default: the baseline)
    teacher_axis: Optional[TeacherAxis] = None  # a method run from several teachers (teacher_axis.py)
    data_axis: Optional[DataAxis] = None  # cells run again on another number of unique images (data_axis.py)
    prior_runs: Optional[str] = None  # a committed runs.jsonl (relative to the study file) fitted with its own runs
    fit_max_epochs: Optional[float] = None  # fit only runs of at most this many epochs (`distill fit --max-epochs`)
    forms: Dict[str, str] = field(default_factory=dict)  # method -> its law, declared (`distill fit --form`)

    def __post_init__(self):
        """What expanding the study derives (attributes, not keys of its file): `load_study` fills them."""
        self.rungs: Dict[str, list] = {}  # size (or `<size>-u<images>`) -> its ladder.Rungs, under budgets
        self.size_of: Dict[str, str] = {}  # ladder variant -> the sweep it takes its rate from, with scaling.lr_sweep
        self.sweep_size: Dict[str, str] = {}  # lr sweep variant -> its sweep (lr_sweep.key: a size, or <size>/<method>)
        self.axis_sizes: Dict[str, str] = {}  # teacher-axis variant -> size
        self.axis_cells: Dict[str, str] = {}  # size -> the ladder cell its teacher axis repeats
        self.data_methods: Dict[str, tuple] = {}  # data-axis label -> (method, unique images)


@dataclass
class Study:
    name: str = MISSING
    output_dir: str = "runs/studies"
    seeds: List[int] = field(default_factory=lambda: [0])
    overrides: List[str] = field(default_factory=list)  # for every run
    launcher: str = "python"  # python: one process; launch: ./launch.sh (one process per GPU)
    runs: Dict[str, StudyRun] = field(default_factory=dict)
    scaling: Optional[Scaling] = None


@dataclass
class Job:
    variant: str
    seed: int
    run_dir: Path
    cmd: List[str]
    needs: Optional[Path] = None
    holdout: bool = False  # a held-out rung's run: predicted before it starts
    waits_for_lr: Optional[str] = None  # the size whose rate (scaling.lr_sweep) is not chosen yet
    sweep_of: Optional[str] = None  # a learning-rate sweep run (scaling.lr_sweep): the size it sweeps
    recipe: str = ""
    settings: List[str] = field(default_factory=list)  # the key=value overrides of its command


def _expand_scaling(study: Study, path: Path, overrides=()) -> None:
    """Add the ladder's variants to `study.runs`, the held-out rung's last."""
    sc = study.scaling
    if not sc.sizes or not (sc.epochs or sc.budgets) or not sc.methods:
        raise ConfigError(f"study {path}: scaling needs sizes, epochs (or budgets) and methods (see recipes/studies/scaling_cpu.yaml)")
    sc.holdout = sc.holdout or list(sc.sizes)[-1]
    if sc.holdout not in sc.sizes:
        raise ConfigError(f"study {path}: scaling.holdout={sc.holdout!r} is not one of the sizes: {', '.join(sc.sizes)}")
    for method, run in sc.methods.items():
        if run.sizes is not None and (not set(run.sizes) <= set(sc.sizes) or sc.holdout not in run.sizes):
            raise ConfigError(f"study {path}: scaling.methods.{method}.sizes={run.sizes} must be sizes of the study "
                              f"and hold the held-out {sc.holdout}")
    if sc.fit_max_epochs is not None:  # refused before any run, not when the prediction is fitted
        check_max_epochs(sc.fit_max_epochs, f"study {path}: scaling.fit_max_epochs")
    if sc.prior_runs is not None:
        sc.prior_runs = scaling.check_prior_runs(path, sc)
    if sc.budgets:
        ladder.expand(study, path, overrides)
        return _expand_axes(study, path, overrides)
    if min(sc.epochs) < 1:
        raise ConfigError(f"study {path}: scaling.epochs={sc.epochs} must be whole epochs >= 1")
    order = [s for s in sc.sizes if s != sc.holdout] + [sc.holdout]
    for size in order:
        for method, run in sc.methods.items():
            for epochs in sc.epochs if run.sizes is None or size in run.sizes else []:
                study.runs[ladder_variant(method, size, epochs)] = StudyRun(
                    run.recipe, run.seeds, [*run.overrides, *sc.sizes[size], f"train.epochs={epochs}"], run.teacher,
                    run.baseline and ladder_variant(run.baseline, size, epochs), run.declared_differences)
    _expand_axes(study, path, overrides)


def _expand_axes(study: Study, path: Path, overrides=()) -> None:
    """The data axis's and the teacher axis's runs (`data_axis.expand`, `teacher_axis.expand`); with
    `scaling.lr_sweep`, each size's sweep runs before its ladder runs (`lr_sweep.expand`), the axes' included."""
    sc = study.scaling
    axis = data_axis.expand(study, path, overrides) if sc.data_axis is not None else {}
    axis.update(teacher_axis.expand(study, path) if sc.teacher_axis is not None else {})
    if not sc.lr_sweep:
        return
    cells = {ladder_variant(m, size, e): (m, size) for m in sc.methods for size in sc.sizes for e in sc.epochs
             if ladder_variant(m, size, e) in study.runs}
    cells.update({v: (next(m for lab, (m, _) in sc.data_methods.items() if v.startswith(f"{lab}_")), size)
                  for v, size in axis.items() if v not in sc.axis_sizes})
    cells.update({v: (sc.teacher_axis.method, size) for v, size in sc.axis_sizes.items()})
    base = scaling.baseline(sc)
    if sc.methods[base].sizes is not None:
        raise ConfigError(f"study {path}: scaling.lr_sweep sweeps each size with {base}, which must run at every size "
                          f"(remove scaling.methods.{base}.sizes)")
    size_of, smallest = lr_sweep.sweeps(sc, base, cells, path)
    lr_sweep.expand(study, path, size_of, smallest)


def load_study(path: Path, overrides=()) -> Study:
    if not path.is_file():
        raise ConfigError(f"study {path} not found; see recipes/studies/")
    try:
        study: Study = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Study), OmegaConf.load(path)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"study {path}: {getattr(e, 'full_key', '') or ''}: "
                          f"{str(getattr(e, 'msg', e)).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # e.g. [a, b=[]] : a flow list's [] needs quotes
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"study {path}:{where}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                          "quote an item that holds [ ] { } or ': '") from None
    for item in overrides:  # where the study's folder is (its lrs.json widens a sweep) before expanding it
        key, _, value = item.partition("=")
        if key.strip() == "output_dir":
            study.output_dir = value.strip()
    if study.scaling is not None:
        _expand_scaling(study, path, overrides)
        scaling.check_forms(path, study.scaling)
    if study.launcher not in ("python", "launch"):
        raise ConfigError(f"study {path}: launcher={study.launcher!r} is not one of: python, launch")
    for variant, run in study.runs.items():
        if run.teacher is not None and run.teacher not in study.runs:
            raise ConfigError(f"study {path}: runs.{variant}.teacher={run.teacher!r} names no variant of the study "
                              f"({', '.join(study.runs)})")
        if not (path.parent / run.recipe).is_file():
            raise ConfigError(f"study {path}: runs.{variant}.recipe={run.recipe} not found")
    study.runs = _teachers_first(study.runs, path)
    ladder.check_forks(study.runs, path)
    return study


def _teachers_first(runs: Dict[str, StudyRun], path: Path) -> Dict[str, StudyRun]:
    """The variants in file order, except that each one's teacher goes before it; a cycle of
    `teacher:` references is refused, since no run of it could ever start."""
    ordered: Dict[str, StudyRun] = {}

    def visit(variant: str, chain: List[str]) -> None:
        if variant in chain:
            cycle = " -> ".join([*chain[chain.index(variant):], variant])
            raise ConfigError(f"study {path}: the teacher: references form a cycle, {cycle} (each run's teacher "
                              "after its arrow), so none of them can start; remove teacher: from one of them")
        if variant not in ordered:
            if runs[variant].teacher is not None:
                visit(runs[variant].teacher, [*chain, variant])
            ordered[variant] = runs[variant]

    for variant in runs:
        visit(variant, [])
    return ordered


# keys the study sets on every run itself, and why an override of them cannot hold
OWNED = {"name": "the study names each run <variant>_s<seed>; give the study another name: in its file instead",
         "seed": "each run's seed comes from the study's seeds: (or the run's); edit those in its file instead",
         "train.resume": "the study resumes every unfinished run itself (train.resume=auto)"}


def _study_overrides(study: Study, path: Path, overrides) -> List[str]:
    """The command line's overrides for every run. `output_dir=DIR` there moves the study (its runs go to
    DIR/<study name>/; `load_study` sets it) and is not passed on; a key the study sets itself (`OWNED`) is
    refused wherever it is given, since the study's own value would silently replace it."""
    given = [("on the command line", list(overrides)), ("in the study's overrides", study.overrides),
             *((f"in runs.{v}.overrides", r.overrides) for v, r in study.runs.items())]
    for where, items in given:
        for item in items:
            key = item.split("=", 1)[0].strip().lstrip("+~")
            if key in OWNED:
                raise ConfigError(f"study {path}: {item} {where} cannot apply: {OWNED[key]}")
            if key == "output_dir" and where != given[0][0]:
                raise ConfigError(f"study {path}: {item} {where} cannot apply: the study's runs go to "
                                  "<output_dir>/<name>/; set output_dir: at the study file's top level instead")
    return [item for item in overrides if item.partition("=")[0].strip() != "output_dir"]  # load_study moved it


def plan(path: Path, overrides=()) -> List[Job]:
    """Every run of the study, in file order, with its command line. `output_dir=DIR` among the overrides
    is the study's folder root (`Study.output_dir`); name=, seed= and train.resume= are refused."""
    study = load_study(path, overrides)
    overrides = _study_overrides(study, path, overrides)
    folder = Path(study.output_dir) / study.name
    first_run = {v: folder / f"{v}_s{(r.seeds or study.seeds)[0]}" for v, r in study.runs.items()}
    sc, held = study.scaling, set()
    if sc is not None:
        held = {ladder_variant(m, sc.holdout, e) for m in sc.methods for e in sc.epochs}
        held |= {v for v, key in {**sc.sweep_size, **sc.axis_sizes}.items()  # the held-out size's sweeps and
                 if lr_sweep.size_of_key(key) == sc.holdout}  # teacher axis: after the prediction
        lr_sweep.check_overrides(sc, overrides, path)
    jobs = []
    for variant, run in study.runs.items():
        for seed in run.seeds or study.seeds:
            run_dir = folder / f"{variant}_s{seed}"
            needs = first_run[run.teacher] if run.teacher else None
            extra = [f"teacher.checkpoint={needs}"] if needs else []
            resume, source = ladder.resume(run.fork, folder, seed, run_dir)  # a fork waits for its source run instead
            lr, waits = lr_sweep.lr_setting(sc, variant, folder)  # the size's chosen rate, once its sweep has run
            extra += [lr] if lr else []
            settings = [*study.overrides, *run.overrides, *extra, *overrides,
                        f"name={run_dir.name}", f"output_dir={folder}", f"seed={seed}", f"train.resume={resume}"]
            needs = source or needs
            recipe = str((path.parent / run.recipe).resolve())
            launcher = [str(ROOT / "launch.sh")] if study.launcher == "launch" else [sys.executable, "-m", "distill",
                                                                                    "train"]
            holdout = variant in held
            sweep_of = sc.sweep_size.get(variant) if sc is not None else None
            jobs.append(Job(variant, seed, run_dir, [*launcher, recipe, *settings], needs, holdout, waits, sweep_of,
                            recipe, settings))
    return jobs


def _run(job: Job, status: dict) -> None:
    """Run one job unless it is complete or its teacher is not; record what happened."""
    label = f"{job.variant} seed {job.seed}"
    if (job.run_dir / records.SUMMARY).exists():
        status[job.run_dir] = "complete (skipped)"
    elif job.needs is not None and not (job.needs / records.SUMMARY).exists():
        status[job.run_dir] = f"not run: {job.needs.name}, which it needs, is not complete"
    elif lr_sweep.waiting(job):
        status[job.run_dir] = lr_sweep.waiting(job)
    else:
        print(f"== study: {label}: {' '.join(job.cmd[-4:])}", flush=True)
        rc, stop = run_passing_stops(job.cmd)
        done = (job.run_dir / records.SUMMARY).exists()
        status[job.run_dir] = "ran" if done else f"FAILED (exit {rc})"
        if stop is not None:  # the run may have finished meanwhile: the study stops all the same
            raise Stopped(stop, job.run_dir, rc)
    print(f"== study: {label}: {status[job.run_dir]}", flush=True)


class Stopped(Exception):
    """A stop request (Ctrl-C, SIGTERM) reached the study while `run_dir` trained: it stopped, its
    checkpoint written (or it finished meanwhile), and the study starts nothing more."""

    def __init__(self, signum: int, run_dir: Path, rc: int):
        self.name, self.run_dir, self.rc = signal.Signals(signum).name, run_dir, rc
        super().__init__(self.name, run_dir, rc)


def _run_phase(path: Path, overrides, study: Study, jobs: List[Job], holdout: bool, status: dict) -> List[Job]:
    """Run the jobs of one phase: the fitted rungs (`holdout` False) or the held-out one. With
    `scaling.lr_sweep`, the phase's sweep runs go first; then each size whose sweep is complete gets
    its rate (lrs.json), or a rate beyond its grid's edge to run first, and the study is planned again,
    so that its runs carry it. Returns the jobs."""
    sweeps = [j for j in jobs if j.holdout == holdout and j.sweep_of]
    while sweeps:  # again while choosing widens a sweep (scaling.lr_sweep_widen) with rates not yet tried
        teachers = {j.needs for j in sweeps}  # a method swept on itself (lr_sweep_methods) may need a teacher
        for job in [j for j in jobs if j.run_dir in teachers and j.run_dir not in status] + sweeps:
            _run(job, status)
        lr_sweep.choose(jobs[0].run_dir.parent, study.scaling, jobs)
        jobs = plan(path, overrides)
        check_existing(jobs, path)
        sweeps = [j for j in jobs if j.holdout == holdout and j.sweep_of and j.run_dir not in status]
    for job in (j for j in jobs if j.holdout == holdout and not j.sweep_of and j.run_dir not in status):
        _run(job, status)
    return jobs


def _scaling_report(study: Study, jobs: List[Job], finished: List[Path], out: Path) -> None:
    """The scaling sections of report.md: the fits, the pre-registration's verdict, the teacher axis and
    the dry run's calibrated estimate against the measured time."""
    folder = jobs[0].run_dir.parent
    print(f"== study: scaling report in {scaling.write_scaling_report(load_runs(finished), study.scaling, folder, out)}")
    line = preregister.verdict(folder, [j.run_dir for j in jobs if j.holdout])
    with open(out / "report.md", "a") as f:
        f.write(f"\n{line}\n" + "\n".join(calibrate.report_lines(folder, finished)) + "\n")
    if study.scaling.teacher_axis is not None:
        print(f"== study: teacher axis in {teacher_axis.write(study.scaling, folder, study.seeds, out)}")
    print(f"== study: {line}")


def check_before_any_run(study: Study, jobs: List[Job], path: Path) -> dict:
    """What `run_study` refuses before any run starts (the dry run says it too): runs made with other
    settings, runs left that `auto` would compute in another precision, a complete teacher or fork
    source without its weights, a held-out rung no law could predict, a variant without its like-with-like
    baseline. Returns the baselines."""
    check_existing(jobs, path)
    check_precision(jobs, path, study.scaling)
    check_weights(jobs, path)
    if study.scaling is not None:  # which always holds a size out
        scaling.check_predictable(path, study.scaling)
    return study_baselines(study, jobs, path)


def run_study(path: Path, overrides=(), report_dir: Optional[Path] = None) -> int:
    """Run what is not complete yet, then write the report. Returns 0 if every run is complete.

    A scaling study runs every rung but the held-out one, writes its prediction for that rung
    (`prediction.json` in the study folder, kept once made) and locks it (`preregister.lock`: its sha256
    and the fitted runs), then runs the held-out rung; the report says in one line whether the
    prediction, unchanged, was locked before every held-out run started (`preregister.verdict`)."""
    study, jobs = load_study(path, overrides), plan(path, overrides)
    baselines = check_before_any_run(study, jobs, path)
    declared = {v: r.declared_differences for v, r in study.runs.items()}
    folder = jobs[0].run_dir.parent
    status = {}
    try:
        jobs = _run_phase(path, overrides, study, jobs, False, status)
        if any(j.holdout for j in jobs):
            sc = study.scaling
            prediction = scaling.predict_holdout(folder, [j for j in jobs if not j.holdout], sc,
                                                 [j for j in jobs if j.holdout])
            ladder = {ladder_variant(m, size, e) for m in [*sc.methods, *sc.data_methods]
                      for size in sc.sizes for e in sc.epochs}
            locked = preregister.lock(folder, [j.run_dir for j in jobs if not j.holdout and j.variant in ladder],
                                      sc.prior_runs)
            print(f"== study: prediction for the held-out rung in {prediction}, locked in {locked}", flush=True)
        jobs = _run_phase(path, overrides, study, jobs, True, status)
    except Stopped as e:  # as `distill train` stopped on request: exit 0, unless its steps were lost
        kept = "complete" if (e.run_dir / records.SUMMARY).exists() else \
            "its checkpoint kept" if e.rc == 0 else f"it exited {e.rc}"
        print(f"== study: stopped by {e.name} in {e.run_dir} ({kept}); no further run started, and no report. "
              f"Go on: the same command", file=sys.stderr, flush=True)
        return e.rc
    finished = [j.run_dir for j in jobs if (j.run_dir / records.SUMMARY).exists()]
    if finished:
        out = report_dir or (folder / "report")
        print(f"== study: report in {write_report(load_runs(finished), out, baselines, declared)}")
        if study.scaling is not None:
            _scaling_report(study, jobs, finished, out)
    failed = [str(d) for d, s in status.items() if not (d / records.SUMMARY).exists()]
    for d in failed:
        print(f"== study: incomplete: {d}: {status[Path(d)]}", file=sys.stderr)
    return 0 if not failed else 1
