"""`distill eval RUN_DIR`: re-evaluate the student saved in a run folder."""
from __future__ import annotations

from pathlib import Path

import torch

from distill.commands.export import run_weights
from distill.recipe import load_config
from distill.data.augment import Normalize
from distill.data.sources import load_split
from distill.runs import records
from distill.train.build import build_batches
from distill.models import build_student
from distill.train.evaluate import evaluate
from distill.models import load_weights


def evaluate_run(run_dir: Path, overrides=(), ema: bool = False) -> dict:
    """Top-1/top-5 (percent) of a run's saved student on its test split, on one process."""
    weights = run_weights(run_dir, ema)
    cfg = load_config(str(run_dir / records.CONFIG), list(overrides) + ["train.resume=''"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test_set = load_split(cfg.data, train=False)
    model = build_student(cfg.student, test_set.num_classes, test_set.in_chans, cfg.data.img_size)
    load_weights(model, weights, role="student")  # strips torch.compile's and DDP's key prefixes, one-line errors
    model.to(device)
    batches = build_batches(cfg.data, test_set, device)
    normalize = Normalize(test_set.mean, test_set.std).to(device)
    result = evaluate(model, batches.iter_range(range(len(test_set))), normalize)
    return {"run": str(run_dir), "weights": weights.name, **result}
