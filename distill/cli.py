"""`distill` command line: train, eval, export, bench, prepare, compare, study, methods, config.

Errors a user can fix print one line, `error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Light imports only: each command imports what it needs inside its function, so `--help` and a
# one-line refusal never pay for torch (distill/config.py is a leaf for the same reason).
from distill.catalog import precheck
from distill.errors import USAGE_ERRORS, ConfigError, UserError
from distill.runs.launcher import end_with_launcher, first_to_report

JOB_FAILED = 1  # a lost process: the job failed, not the user's input (a launcher tells the two apart by it)
INTERRUPTED = 130  # the shell's status for a run stopped by SIGINT


def _load(args):
    """The command's recipe and overrides as a validated config: what needs no registry is refused
    first, before torch is imported."""
    precheck(args.recipe, args.overrides)
    from distill.recipe import load_config

    return load_config(args.recipe, args.overrides)


def cmd_config(args) -> int:
    from distill.config import to_yaml

    print(to_yaml(_load(args)), end="")
    return 0


def cmd_train(args) -> int:
    cfg = _load(args)
    from distill.runs.folder import RunComplete
    from distill.runs.launcher import peer_reported_error
    from distill.runs.peers import lost_peer_message
    from distill.runs.signals import Preempted
    from distill.train.trainer import Trainer

    run_dir = Path(cfg.output_dir) / cfg.name
    try:
        trainer = Trainer(cfg)
        summary = trainer.fit()
    except RunComplete as e:
        print(str(e), file=sys.stderr)
        return 0
    except Preempted as e:
        if trainer.accelerator.is_main_process:
            print(str(e), file=sys.stderr)
        return 0
    except KeyboardInterrupt:  # a second Ctrl-C: at once, whatever the step
        print(f"error: interrupted; the steps since the last complete checkpoint in {run_dir / 'checkpoints'} "
              "are lost. Resume: the same command with train.resume=auto", file=sys.stderr)
        return INTERRUPTED
    except RuntimeError as e:  # a collective whose peer died: one line, the launcher reports the rest
        message = lost_peer_message(e)
        if message is None:
            raise
        if peer_reported_error():  # the process that stopped on a user error has said so
            return USAGE_ERRORS
        print(f"error: {message}", file=sys.stderr)
        return JOB_FAILED
    if trainer.accelerator.is_main_process:
        keys = ("name", "best_top1", "final_top1", "params", "world_size", "wall_s", "train_img_per_s")
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


def cmd_eval(args) -> int:
    from distill.commands.evaluate import evaluate_run

    print(json.dumps(evaluate_run(Path(args.run_dir), args.overrides, ema=args.ema), indent=2))
    return 0


def cmd_compare(args) -> int:
    from distill.report.compare import load_runs, markdown_table, write_report
    from distill.runs.durable import check_folder_path

    if args.out:  # before anything is read or printed
        check_folder_path(args.out, "--out")
    runs = load_runs(args.run_dirs)
    print(markdown_table([r["summary"] for r in runs]))
    if args.out:
        print(f"report: {write_report(runs, Path(args.out))}")
    return 0


def cmd_bench(args) -> int:
    cfg = _load(args)
    from distill.commands.bench import format_table, run_bench, run_data_bench

    if args.data:
        if args.reference or args.rounds != 1:
            raise ConfigError("--data times the input pipeline; drop --reference and --rounds")
        result = run_data_bench(cfg, steps=args.steps, warmup=args.warmup)
    else:
        result = run_bench(cfg, steps=args.steps, warmup=args.warmup, rounds=args.rounds, reference=args.reference)
    print(format_table({k: v for k, v in result.items() if k != "per_round"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_study(args) -> int:
    from distill.report.study import check_before_any_run, load_study, plan, run_study

    if args.dry_run:
        jobs = plan(Path(args.study), args.overrides)
        for job in jobs:
            print(" ".join(job.cmd))
        from distill.report.estimate import estimate, table

        study = load_study(Path(args.study), args.overrides)
        rows = estimate(jobs, study)
        if args.calibrate:  # a short timed run per size: start-up, data path and evaluation (report/calibrate.py)
            from distill.report.calibrate import calibrate

            check_before_any_run(study, jobs, Path(args.study))  # before its timed runs and estimate.json
            rows = calibrate(jobs, rows, jobs[0].run_dir.parent)
        from distill.runs.records import SUMMARY

        print("\n" + table(rows, {j.run_dir.name for j in jobs if (j.run_dir / SUMMARY).exists()}))
        from distill.report.ladder import budget_lines, saved_line

        if study.scaling is not None and study.scaling.budgets:
            print("\n" + "\n".join(budget_lines(study.scaling)) + "\n" + saved_line(rows))
        from distill.report.lr_sweep import dry_run_lines

        for line in dry_run_lines(study.scaling, jobs[0].run_dir.parent, rows) if study.scaling else []:
            print(line)
        if study.scaling is not None and study.scaling.prior_runs:
            from distill.report.scaling import prior_rows

            prior = prior_rows(study.scaling)
            print(f"\nfitted with the study's own runs: {len(prior)} prior runs of "
                  f"{len({r['params'] for r in prior})} sizes from {study.scaling.prior_runs}")
        check_before_any_run(study, jobs, Path(args.study))  # what the study would refuse here: exit 2, after the table
        return 0
    return run_study(Path(args.study), args.overrides, Path(args.out) if args.out else None)


def cmd_fit(args) -> int:
    from distill.commands.fit import run_fit  # numpy and scipy only: a refusal stays instant

    out = run_fit(args.runs, args.out, args.holdout_params, args.bootstrap, args.students,
                  max_epochs=args.max_epochs, forms=args.form, backtest=args.backtest)
    print(f"{'backtest.json and backtest.md' if args.backtest else 'fits.json, report.md and plots'} in {out}")
    return 0


def cmd_prepare(args) -> int:
    from distill.commands.prepare import prepare

    m = prepare(Path(args.src), Path(args.dst), args.max_side, args.quality, args.workers)
    print(f"{args.dst}: {m['images']} images (long side <= {m['max_side']}), {m['written']} written, "
          f"{m['kept']} already there; train on it with data.root={args.dst}")
    return 0


def cmd_export(args) -> int:
    from distill.commands.export import export_run

    print(export_run(Path(args.run_dir), Path(args.out), ema=args.ema))
    return 0


def cmd_methods(args) -> int:
    """One block per registered method: what it is, its paper, its keys, what it works with, where it came from."""
    from distill.methods import METHODS
    from distill.methods.plugins import SOURCES, load_plugins

    load_plugins(args.plugins)  # installed entry points, then the plugins named here
    for m in METHODS.values():
        own = [f"distill.{k} (default {spec.default!r}; {spec.help})" for k, spec in m.keys.items()]
        supports = [w for w, ok in [("distillation token", m.token), ("logit cache", m.cache),
                                    ("top-k cache", m.topk_cache), ("Mixup/CutMix", m.mixup)] if ok]
        print(f"{m.name:8s} {m.summary}\n{'':8s} paper: {m.paper}\n"
              f"{'':8s} keys: {', '.join([f'distill.{k}' for k in m.reads] + own) or '-'}\n"
              f"{'':8s} works with: {', '.join(supports) or '-'}{'' if m.needs_teacher else ' (no teacher)'}")
        if m.name in SOURCES:
            print(f"{'':8s} from: plugin {SOURCES[m.name]['plugin']} (module {SOURCES[m.name]['module']}, "
                  f"{SOURCES[m.name]['file']})")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="steady-state training/inference speed of a recipe (see distill/commands/bench.py)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, help="timed training steps (default: 50, or what one epoch allows)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 10, or what one epoch allows)")
    p.add_argument("--reference", action="store_true",
                   help="also time a common torchvision/DataLoader loop and the model's compute ceiling")
    p.add_argument("--rounds", type=int, default=1,
                   help="time N blocks of --steps steps, interleaved with --reference's, and report the totals")
    p.add_argument("--data", action="store_true",
                   help="time the input pipeline alone (one worker, the device augmentation, all workers) beside the "
                        "training step, and say which bounds the run (see distill/commands/bench_data.py)")
    p.add_argument("--out", help="write the JSON here")
    p.set_defaults(func=cmd_bench)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="a resized copy of an image folder, made once (see distill/commands/prepare.py)")
    p.add_argument("src", help="an image folder: SRC/train/<class>/*, SRC/val/<class>/*")
    p.add_argument("dst", help="the copy (resumable: run the same command again to finish it)")
    p.add_argument("--max-side", type=int, required=True, help="longest side of the copy's images (e.g. 320, 512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of resized images")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the usable cores)")
    p.set_defaults(func=cmd_prepare)


def _fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", help="JSONL, one run a line: method, params, images, flops, seed, top1, ...")
    p.add_argument("--out", required=True, help="a new folder for fits.json, report.md and the plots")
    p.add_argument("--holdout-params", type=float, help="hold out the runs with this many parameters")
    p.add_argument("--bootstrap", type=int, default=400, help="bootstrap refits (default 400)")
    p.add_argument("--students", type=int,
                   help="students the teacher's training is amortised over (default: each method's cells)")
    p.add_argument("--max-epochs", type=float,
                   help="fit only runs that saw their unique images at most this many times (needs unique_images)")
    p.add_argument("--form", action="append", default=[], metavar="[METHOD=]LAW",
                   help="declare a method's law (zhai, chinchilla or kaplan; without METHOD=, every method's) "
                        "instead of choosing it by leaving one size out, which needs 4 sizes (docs/fit.md)")
    p.add_argument("--backtest", type=float, metavar="RATIO",
                   help="predict every size from the sizes at least RATIO times smaller, one fit each, and score "
                        "each beside persistence and log-linear (backtest.json, backtest.md)")
    p.set_defaults(func=cmd_fit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a recipe")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/fashion_mnist/plain_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="re-evaluate the student saved in a run folder; prints JSON")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.root=...)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a run's student for timm alone: config.json + model.safetensors")
    p.add_argument("run_dir")
    p.add_argument("out", help="a new folder; then timm.create_model('local-dir:OUT', pretrained=True)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.set_defaults(func=cmd_export)

    _add_bench(sub)
    _add_prepare(sub)

    p = sub.add_parser("compare", help="finished runs side by side; --out writes report.md and plots")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="write report.md and PNG plots into this folder")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("study", help="run a study file (skipping complete runs), then report")
    p.add_argument("study", help="study YAML, e.g. recipes/studies/fashion_mnist_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. to shrink it)")
    p.add_argument("--out", help="report folder (default: <study folder>/report)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands, each run's FLOPs and estimated hours; run nothing")
    p.add_argument("--calibrate", action="store_true", help="with --dry-run: time a short run per size, write estimate.json")
    p.set_defaults(func=cmd_study)

    _fit_arguments(sub.add_parser("fit", help="fit scaling laws to a JSONL table of runs (see docs/fit.md)"))

    p = sub.add_parser("methods", help="list the distillation methods (distill.type), their papers and keys")
    p.add_argument("plugins", nargs="*", help="plugins to load first: modules or .py files (as a recipe's plugins:)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("config", help="print the fully resolved config")
    p.add_argument("recipe", nargs="?", help="YAML recipe (none: the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_config)
    return parser


def parse(argv=None) -> argparse.Namespace:
    """The command line, with `key=value` overrides taken wherever they stand (`distill bench RECIPE
    --data train.epochs=1`), as users type them; anything else argparse does not know is its error."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) < len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # argparse's own message and exit status for what it does not know
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv=None) -> int:
    end_with_launcher()  # a process of a launched job must not outlive its launcher
    args = parse(argv)
    try:
        return args.func(args)
    except UserError as e:  # the one place a user's mistake becomes a message, not a traceback
        if first_to_report():  # one line for a job of N processes
            print(f"error: {e}", file=sys.stderr)
        return USAGE_ERRORS


if __name__ == "__main__":
    sys.exit(main())
