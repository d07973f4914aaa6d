"""DIST (`distill.type=dist`) against its formula computed by hand with `math` on 3 x 4 logits."""
import math

import pytest
import torch

from conftest import ROOT
from distill.cli import main
from distill.config import ConfigError
from distill.recipe import DistillConfig, load_config
from distill.methods import build_criterion, build_method

S = [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 1.5, 0.0], [2.0, 0.3, -0.5, 1.0]]  # student logits, 3 samples x 4 classes
D = [[0.0, 1.0, 1.0, 2.0], [-1.0, 0.5, 0.0, 1.0], [1.0, 1.0, -2.0, 0.0]]  # a distillation head's logits
T = [[2.0, 0.0, 1.0, -0.5], [0.0, 0.0, 3.0, 1.0], [1.5, -1.0, 0.0, 2.5]]  # teacher logits
Y = [1, 2, 0]
LABELS = torch.tensor(Y)


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


def method(base, alpha=0.5, tau=1.0, **keys):
    return build_method(DistillConfig(type="dist", alpha=alpha, tau=tau, **keys), base)


def softmax(row, tau):
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def ce(rows, labels):
    return sum(-math.log(softmax(r, 1.0)[y]) for r, y in zip(rows, labels)) / len(rows)


def pearson(a, b):
    """The reference's Pearson: cosine of the mean-centred vectors, eps 1e-8 on the product of the norms."""
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - mean_a for x in a], [x - mean_b for x in b]
    dot = sum(x * y for x, y in zip(da, db))
    norm_a, norm_b = math.sqrt(sum(x * x for x in da)), math.sqrt(sum(x * x for x in db))
    return dot / (norm_a * norm_b + 1e-8)


def dist_by_hand(s_rows, t_rows, tau):
    """(L_inter, L_intra): tau^2 (1 - mean correlation) over the samples' rows, then over the classes' columns."""
    ys, yt = [softmax(r, tau) for r in s_rows], [softmax(r, tau) for r in t_rows]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ys, yt)) / len(ys)
    k = len(ys[0])
    cols_s, cols_t = [[row[j] for row in ys] for j in range(k)], [[row[j] for row in yt] for j in range(k)]
    intra = 1 - sum(pearson(a, b) for a, b in zip(cols_s, cols_t)) / k
    return tau ** 2 * inter, tau ** 2 * intra


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_terms_and_weights_by_hand(tau):
    alpha, beta, gamma = 0.3, 0.7, 2.5
    out = method(build_criterion(False, 0.0), alpha, tau, dist_beta=beta, dist_gamma=gamma)(tensor(S), LABELS,
                                                                                               tensor(T))
    assert set(out) == {"loss", "base", "distill", "dist_inter", "dist_intra"}
    inter, intra = dist_by_hand(S, T, tau)
    assert inter > 1e-3 and intra > 1e-3  # both terms are live on these logits
    assert out["dist_inter"].item() == pytest.approx(inter, rel=1e-5)
    assert out["dist_intra"].item() == pytest.approx(intra, rel=1e-5)
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert out["distill"].item() == pytest.approx(beta * inter + gamma * intra, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce(S, Y) + alpha * (beta * inter + gamma * intra),
                                               rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_identical_logits_give_zero(tau):
    """0 but for the reference's eps: 1 - r = eps / |y - mean(y)|^2 per row or column, times tau^2; at tau 4
    the near-uniform columns make that 3e-5 here. fp32 leaves a few ulps of 1 - r, times tau^2."""
    out = method(build_criterion(False, 0.0), 0.5, tau)(tensor(T), LABELS, tensor(T))
    inter, intra = dist_by_hand(T, T, tau)
    assert max(inter, intra) < 5e-5
    assert out["dist_inter"].item() == pytest.approx(inter, abs=4e-7 * tau ** 2)
    assert out["dist_intra"].item() == pytest.approx(intra, abs=4e-7 * tau ** 2)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_inter_is_invariant_to_an_increasing_affine_map_per_sample(tau):
    """y_s[i] = a_i y_t[i] + (1 - a_i) / K is a softmax (positive, sums to 1) for 0 < a_i <= 1, reached by
    the student logits tau * log(y_s[i]): each row correlates perfectly (inter 0), but with a different
    a_i per sample the columns do not (intra > 0)."""
    scales, k = [0.5, 0.9, 0.2], len(T[0])
    y_s = [[a * p + (1 - a) / k for p in softmax(t, tau)] for a, t in zip(scales, T)]
    student = [[tau * math.log(p) for p in row] for row in y_s]
    out = method(build_criterion(False, 0.0), 0.5, tau)(tensor(student), LABELS, tensor(T))
    inter, intra = dist_by_hand(student, T, tau)
    assert inter < 5e-5  # 0 but for the eps, as with identical logits
    assert out["dist_inter"].item() == pytest.approx(inter, abs=4e-7 * tau ** 2)
    assert intra > 1e-3 and out["dist_intra"].item() == pytest.approx(intra, rel=1e-4)


def test_the_distillation_head_gets_the_teacher_term():
    alpha, tau = 0.5, 2.0
    out = method(build_criterion(False, 0.0), alpha, tau)((tensor(S), tensor(D)), LABELS, tensor(T))
    inter, intra = dist_by_hand(D, T, tau)
    assert abs(inter - dist_by_hand(S, T, tau)[0]) > 1e-2  # the heads differ: the test tells them apart
    assert out["dist_inter"].item() == pytest.approx(inter, rel=1e-5)
    assert out["dist_intra"].item() == pytest.approx(intra, rel=1e-5)
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)  # the class head gets the labels
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce(S, Y) + alpha * (inter + intra), rel=1e-5)


def test_mixup_targets_reach_only_the_label_term():
    mixed = [[0.05, 0.65, 0.25, 0.05], [0.3, 0.05, 0.6, 0.05], [0.7, 0.1, 0.1, 0.1]]
    out = method(build_criterion(True, 0.0), 0.5, 4.0)(tensor(S), tensor(mixed), tensor(T))
    soft_ce = sum(-sum(q * math.log(p) for q, p in zip(m, softmax(s, 1.0))) for m, s in zip(mixed, S)) / len(S)
    inter, intra = dist_by_hand(S, T, 4.0)
    assert out["base"].item() == pytest.approx(soft_ce, rel=1e-6)
    assert out["distill"].item() == pytest.approx(inter + intra, rel=1e-5)  # the defaults 1 and 1


@pytest.mark.parametrize("rows", [3, 1])
def test_gradients_are_finite(rows):
    """One sample: every column is constant over the batch, so intra is tau^2 (correlation 0) with no NaN."""
    student = tensor(S[:rows], grad=True)
    out = method(build_criterion(False, 0.0), 0.5, 4.0)(student, LABELS[:rows], tensor(T[:rows]))
    out["loss"].backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    if rows == 1:
        assert out["dist_intra"].item() == pytest.approx(16.0, rel=1e-6)


def test_config_keys_and_their_rules():
    cfg = load_config(None, ["distill.type=dist", "teacher.model=resnet10t"])
    assert (cfg.distill.type, cfg.distill.dist_beta, cfg.distill.dist_gamma, cfg.distill.tau) == ("dist", 1.0, 1.0, 1.0)
    loss = build_method(cfg.distill, build_criterion(False, 0.0))
    assert (loss.tau, loss.dist_beta, loss.dist_gamma) == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"distill\.dist_beta=-1\.0 must be >= 0") as err:
        load_config(None, ["distill.type=dist", "teacher.model=resnet10t", "distill.dist_beta=-1"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"distill\.dist_beta=2\.0 applies to distill\.type=dist only"):
        load_config(None, ["distill.type=kd", "teacher.model=resnet10t", "distill.dist_beta=2"])
    with pytest.raises(ConfigError, match=r"distill\.dkd_beta=4\.0 applies to distill\.type=dkd only"):
        load_config(None, ["distill.type=dist", "teacher.model=resnet10t", "distill.dkd_beta=4"])


def test_distill_methods_lists_dist_with_its_keys(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[0] == "dist")
    assert "Huang et al. 2022" in lines[at + 1]
    assert lines[at + 2].split("keys: ")[1].startswith("distill.alpha, distill.tau, distill.standardize, distill.dist_beta (default 1.0; ")
    assert "distill.dist_gamma (default 1.0; " in lines[at + 2]
    assert lines[at + 3].split("works with: ")[1] == "distillation token, logit cache, top-k cache, Mixup/CutMix"


def test_the_recipe_loads_the_papers_imagenet_setting():
    recipe = str(ROOT / "recipes/fashion_mnist/dist_tiny.yaml")
    cfg = load_config(recipe)
    assert (cfg.distill.type, cfg.student.distilled, cfg.teacher.model) == ("dist", False, "resnet18")
    assert (cfg.distill.alpha, cfg.distill.tau, cfg.distill.dist_beta, cfg.distill.dist_gamma) == (0.5, 1.0, 1.0, 1.0)
    assert load_config(recipe, ["distill.cache=true", "distill.cache_topk=3", "student.distilled=true"]).distill.cache
