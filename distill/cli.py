"""`distill` command line: train, eval, config. Errors a user can fix print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.config import ConfigError, load_config, to_yaml

USAGE_ERRORS = 2


def _known_errors() -> tuple:
    """Exception types whose message is the whole story for the user (no traceback)."""
    from distill.checkpoint import CheckpointError
    from distill.datasets import DataError
    from distill.trainer import DivergenceError
    from teachers import TeacherError

    return ConfigError, DataError, TeacherError, CheckpointError, DivergenceError


def cmd_config(args) -> int:
    print(to_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


def cmd_train(args) -> int:
    from distill.rundir import RunComplete
    from distill.trainer import Preempted, Trainer

    cfg = load_config(args.recipe, args.overrides)
    try:
        trainer = Trainer(cfg, recipe=args.recipe)
        summary = trainer.fit()
    except RunComplete as e:
        print(str(e), file=sys.stderr)
        return 0
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return 0
    if trainer.accelerator.is_main_process:
        keys = ("name", "best_top1", "final_top1", "params", "world_size", "wall_s", "train_img_per_s")
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


def cmd_eval(args) -> int:
    from distill.evaluate import evaluate_run

    print(json.dumps(evaluate_run(Path(args.run_dir), args.overrides, ema=args.ema), indent=2))
    return 0


def cmd_compare(args) -> int:
    from distill.compare import load_summaries, markdown_table

    table = markdown_table(load_summaries(args.run_dirs))
    print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.md").write_text(table + "\n")
    return 0


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

    p = sub.add_parser("compare", help="finished runs side by side")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="also write report.md into this folder")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("config", help="print the fully resolved config")
    p.add_argument("recipe", nargs="?", help="YAML recipe (none: the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:  # before heavy imports, so a bad recipe fails fast
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERRORS
    except Exception as e:
        if isinstance(e, _known_errors()):
            print(f"error: {e}", file=sys.stderr)
            return USAGE_ERRORS
        raise


if __name__ == "__main__":
    sys.exit(main())
