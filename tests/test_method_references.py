"""The methods against their references, each computed here independently of our code:
DeiT's soft term as its losses.py writes it, KD and DKD's label term as Hinton's and mdistiller's
(plain cross-entropy), mdistiller's DKD warm-up, timm's FeatureDistillationTask, and logit
standardisation (Sun et al. 2024) by numpy."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, ROOT, needs_fmnist, run_main
from distill.config import ConfigError
from distill.recipe import DistillConfig, load_config
from distill.methods import build_criterion, build_method
from distill.methods.feature import FeatureStudent, TeacherFeatures
from distill.models import create_model
from teachers.teacher import Teacher

RECIPES = ROOT / "recipes"


def recipe_method(path: str, *overrides: str):
    """The method a recipe trains with, built as a run builds it (no Mixup in these recipes)."""
    cfg = load_config(str(RECIPES / path), list(overrides))
    return build_method(cfg.distill, build_criterion(False, cfg.data.label_smoothing)), cfg


def logits(rows=8, classes=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g) * scale


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_the_soft_recipes_weigh_deits_term(dataset):
    """DeiT's losses.py, soft: kl_div(log_softmax(s/T), log_softmax(t/T), 'sum', log_target) * T^2 / s.numel()."""
    loss, cfg = recipe_method(f"{dataset}/soft_tiny.yaml", "teacher.checkpoint=")
    cls, dist, teacher, labels = logits(seed=1), logits(seed=2), logits(seed=3), torch.arange(8) % 10
    T, alpha = cfg.distill.tau, cfg.distill.alpha
    assert (T, alpha) == (3.0, 0.1)
    deit = F.kl_div(F.log_softmax(dist / T, dim=1), F.log_softmax(teacher / T, dim=1), reduction="sum",
                    log_target=True) * (T * T) / dist.numel()
    base = (-(F.log_softmax(cls, 1)).gather(1, labels[:, None]).squeeze(1) * 0.9
            - F.log_softmax(cls, 1).mean(1) * 0.1).mean()  # label smoothing 0.1, as DeiT's criterion
    out = loss((cls, dist), labels, teacher)
    assert out["distill"].item() == pytest.approx(deit.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((base * (1 - alpha) + deit * alpha).item(), rel=1e-5)


@pytest.mark.parametrize("recipe", ["kd_tiny.yaml", "dkd_tiny.yaml", "kd_standardized_tiny.yaml"])
def test_kd_and_dkd_recipes_use_plain_cross_entropy(recipe):
    """Hinton's and mdistiller's label term: cross-entropy without smoothing."""
    loss, _ = recipe_method(f"fashion_mnist/{recipe}", "teacher.checkpoint=")
    s, labels = logits(seed=4), torch.arange(8) % 10
    plain = -F.log_softmax(s, 1).gather(1, labels[:, None]).mean()
    assert loss.base_criterion(s, labels).item() == pytest.approx(plain.item(), rel=1e-6)


def mdistiller_dkd_weight(epoch: int, warmup: float) -> float:
    """mdistiller's DKD: loss_dkd = min(epoch / warmup, 1) * ..., epoch counted from 1."""
    return min(epoch / warmup, 1.0)


def test_dkd_warms_up_as_mdistiller():
    cfg = DistillConfig(type="dkd", alpha=0.5, tau=4.0, dkd_warmup=4.0)
    loss = build_method(cfg, build_criterion(False, 0.0))
    s, t, labels = logits(seed=5), logits(seed=6), torch.arange(8) % 10
    full = None
    for epoch in (1, 2, 3, 4, 5, 9):  # at the end of each epoch the weight is mdistiller's for that epoch
        loss.set_progress(float(epoch))
        out = loss(s, labels, t)
        terms = 1.0 * out["dkd_tckd"] + 8.0 * out["dkd_nckd"]
        full = terms.item()
        assert out["distill"].item() == pytest.approx(mdistiller_dkd_weight(epoch, 4.0) * full, rel=1e-6)
    loss.set_progress(0.5)  # within the first epoch it ramps per step
    assert loss(s, labels, t)["distill"].item() == pytest.approx(0.125 * full, rel=1e-6)
    assert loss(s, labels, t)["dkd_warmup"].item() == 0.125


def test_the_dkd_recipe_warms_up_over_mdistillers_20_epochs():
    _, cfg = recipe_method("fashion_mnist/dkd_tiny.yaml", "teacher.checkpoint=")
    assert cfg.distill.dkd_warmup == 20.0


def test_dkd_refuses_mixup_and_cutmix():
    """A mixed image has two classes; DKD's target / non-target split needs one."""
    for override in ("data.cutmix_alpha=1.0", "data.mixup_alpha=0.8"):
        with pytest.raises(ConfigError, match="one class per image"):
            load_config(str(RECIPES / "fashion_mnist/dkd_tiny.yaml"), [override, "teacher.checkpoint="])


def test_feature_pre_logits_is_timms_feature_distillation_task():
    """timm's task: MSE(projection(student.forward_head(f_s, pre_logits=True)), teacher pre-logits), the
    projection a Linear only when the widths differ."""
    _, cfg = recipe_method("fashion_mnist/feature_tiny.yaml", "teacher.checkpoint=")
    assert cfg.distill.feature_match == "pre_logits"
    torch.manual_seed(0)
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32).eval()
    net = create_model("resnet10t", num_classes=10, in_chans=1).eval()
    loss = build_method(cfg.distill, build_criterion(False, 0.0))
    wrapped, features = loss.wrap(student, Teacher(net, [0.5], [0.25]), 1, 32)
    x, labels = torch.randn(4, 1, 32, 32), torch.arange(4)
    with torch.no_grad():
        cls_token = student.norm(student.blocks(student._pos_embed(student.patch_embed(x))))[:, 0]  # final norm
        target = net.forward_head(net.forward_features(x), pre_logits=True)  # (4, 512): pooled last stage
        expected = F.mse_loss(wrapped.projection(cls_token), target)
        out = loss(wrapped(x), labels, features(x))
    assert isinstance(wrapped.projection, torch.nn.Linear) and wrapped.projection.in_features == 256
    assert out["distill"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_feature_pre_logits_projects_only_when_widths_differ():
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)
    same = FeatureStudent(student, None, teacher_dim=256, in_chans=1, img_size=32)
    other = FeatureStudent(student, None, teacher_dim=512, in_chans=1, img_size=32)
    assert isinstance(same.projection, torch.nn.Identity) and isinstance(other.projection, torch.nn.Linear)
    block = FeatureStudent(student, -1, teacher_dim=256, in_chans=1, img_size=32)  # FitNet hint: always
    assert isinstance(block.projection, torch.nn.Linear)
    teacher = TeacherFeatures(Teacher(create_model("resnet10t", num_classes=10, in_chans=1), [0.5], [0.25]), None)
    assert teacher.width(1, 32) == 512


def test_feature_layers_belong_to_the_block_match():
    with pytest.raises(ConfigError, match="feature_match=block"):
        load_config(str(RECIPES / "fashion_mnist/feature_tiny.yaml"), ["distill.feature_layer=-2",
                                                                        "teacher.checkpoint="])


def zscore(a: np.ndarray) -> np.ndarray:
    """Sun et al. 2024, Eq. (Z-score): (z - mean) / std over the classes; the code's std is unbiased + 1e-7."""
    return (a - a.mean(-1, keepdims=True)) / (a.std(-1, ddof=1, keepdims=True) + 1e-7)


def np_kl_batchmean(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    def log_softmax(z):
        z = z / tau
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    ls, lt = log_softmax(s), log_softmax(t)
    return float((np.exp(lt) * (lt - ls)).sum(-1).mean() * tau ** 2)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_with_logit_standardisation_by_hand(tau):
    s, t, labels = logits(seed=7, scale=5.0), logits(seed=8, scale=0.5) + 3.0, torch.arange(8) % 10
    loss = build_method(DistillConfig(type="kd", alpha=0.9, tau=tau, standardize=True), build_criterion(False, 0.0))
    out = loss(s, labels, t)
    expected = np_kl_batchmean(zscore(s.double().numpy()), zscore(t.double().numpy()), tau)
    assert out["distill"].item() == pytest.approx(expected, rel=1e-5)
    # invariant to each side's per-sample scale and shift, which plain KD is not
    shifted = loss(s * 3.0 + 1.0, labels, t * 0.2 - 5.0)
    assert shifted["distill"].item() == pytest.approx(expected, rel=1e-4)


def test_standardisation_applies_to_soft_dkd_and_dist_and_is_refused_elsewhere():
    s, t, labels = logits(seed=9), logits(seed=10), torch.arange(8) % 10
    for kind in ("soft", "dkd", "dist"):
        on = build_method(DistillConfig(type=kind, alpha=0.5, tau=2.0, standardize=True), build_criterion(False, 0.0))
        off = build_method(DistillConfig(type=kind, alpha=0.5, tau=2.0), build_criterion(False, 0.0))
        z = lambda a: torch.from_numpy(zscore(a.double().numpy())).float()  # noqa: E731
        assert on(s, labels, t)["distill"].item() == pytest.approx(off(z(s), labels, z(t))["distill"].item(), rel=1e-5)
    for kind, recipe in (("hard", "hard_tiny.yaml"), ("feature", "feature_tiny.yaml")):
        with pytest.raises(ConfigError, match="standardize"):
            load_config(str(RECIPES / "fashion_mnist" / recipe), ["distill.standardize=true", "teacher.checkpoint="])


def test_the_standardised_kd_recipe_is_the_references_cifar_setting():
    """--logit-stand --base-temp 2 --kd-weight 9 with mdistiller's CE weight 0.1."""
    _, cfg = recipe_method("fashion_mnist/kd_standardized_tiny.yaml", "teacher.checkpoint=")
    d = cfg.distill
    assert (d.type, d.standardize, d.tau) == ("kd", True, 2.0)
    assert d.alpha / (1 - d.alpha) == pytest.approx(9 / 0.1, rel=0.01)


@pytest.mark.slow
@needs_fmnist
def test_a_run_warms_dkd_up_step_by_step(tmp_path):
    """4 steps an epoch, warm-up over 2 epochs: the weight of step s (0-based, all epochs) is (s + 1) / 8,
    so the epoch means logged are (1 + 2 + 3 + 4) / 32 and (5 + 6 + 7 + 8) / 32."""
    res = run_main("train", RECIPES / "fashion_mnist/dkd_tiny.yaml", f"output_dir={tmp_path}", *QUICK,
                   "data.train_subset=128", "data.test_subset=64", "distill.dkd_warmup=2", "teacher.checkpoint=null",
                   "teacher.model=resnet10t", "teacher.small_input_stem=false", "train.eval_every=2")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "fashion_mnist_dkd_tiny/metrics.jsonl").read_text().splitlines()]
    assert [r["loss_dkd_warmup"] for r in rows if "loss_dkd_warmup" in r] == pytest.approx([10 / 32, 26 / 32])
