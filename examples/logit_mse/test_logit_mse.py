"""The example plugin: its term against the formula by hand, and its recipe loading it by path.
Run from this folder (or a copy of it): `python -m pytest test_logit_mse.py -q`."""
import math
from pathlib import Path

import pytest
import torch

from distill.config import ConfigError
from distill.recipe import load_config
from distill.methods import METHODS, build_criterion, build_method

HERE = Path(__file__).resolve().parent
S = [[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]]  # student logits, 2 samples x 3 classes
T = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]  # teacher logits


def mse_by_hand(s_rows, t_rows, center):
    if center:
        s_rows = [[v - sum(r) / len(r) for v in r] for r in s_rows]
        t_rows = [[v - sum(r) / len(r) for v in r] for r in t_rows]
    return sum((a - b) ** 2 for rs, rt in zip(s_rows, t_rows) for a, b in zip(rs, rt)) / (len(S) * len(S[0]))


@pytest.mark.parametrize("center", [True, False])
def test_term_and_loss_by_hand(center):
    cfg = load_config(str(HERE / "logit_mse.yaml"), [f"distill.logit_mse_center={center}", "distill.alpha=0.25"])
    method = build_method(cfg.distill, build_criterion(False, 0.0))
    out = method(torch.tensor(S), torch.tensor([1, 2]), torch.tensor(T))
    ce = sum(-math.log(math.exp(r[y]) / sum(math.exp(v) for v in r)) for r, y in zip(S, [1, 2])) / 2
    assert out["logit_mse"].item() == pytest.approx(mse_by_hand(S, T, center), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.75 * ce + 0.25 * mse_by_hand(S, T, center), rel=1e-6)


def test_the_recipe_registers_the_plugin_and_its_key():
    cfg = load_config(str(HERE / "logit_mse.yaml"))
    assert cfg.distill.type == "logit_mse" and cfg.distill.logit_mse_center is True
    assert cfg.plugins == [str(HERE / "logit_mse.py")] and "logit_mse" in METHODS
    with pytest.raises(ConfigError, match="logit_mse_center"):
        load_config(str(HERE / "logit_mse.yaml"), ["distill.logit_mse_center=sometimes"])
