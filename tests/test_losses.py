"""Every loss term against values computed by hand with `math` on 2 x 3 logits."""
import math

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from distill.config import ConfigError
from distill.recipe import DistillConfig, load_config
from distill.methods import build_criterion, build_method
from distill.methods.dkd import dkd_terms
from distill.methods.hard import hard_distillation
from distill.methods.kd import kd_distillation
from distill.methods.soft import soft_distillation


def method(base, kind="none", alpha=0.5, tau=1.0, **keys):
    """The registered method `kind` around the label term `base`, as a run builds it."""
    return build_method(DistillConfig(type=kind, alpha=alpha, tau=tau, **keys), base)

S = [[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]]  # student logits, 2 samples x 3 classes
D = [[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]]  # a distillation head's logits
T = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]  # teacher logits; argmax 0 and 2
Y = [1, 2]


def log_softmax(row, tau=1.0):
    z = [v / tau for v in row]
    log_sum = math.log(sum(math.exp(v) for v in z))
    return [v - log_sum for v in z]


def ce(rows, labels):
    return sum(-log_softmax(r)[y] for r, y in zip(rows, labels)) / len(rows)


def smoothed_ce(rows, labels, eps):
    per = [(1 - eps) * -log_softmax(r)[y] + eps * sum(-v for v in log_softmax(r)) / len(r)
           for r, y in zip(rows, labels)]
    return sum(per) / len(per)


def kl_per_sample(s_rows, t_rows, tau):
    """Mean over samples of KL(p_t || p_s) at temperature tau, without the tau^2 factor."""
    total = 0.0
    for s, t in zip(s_rows, t_rows):
        ls, lt = log_softmax(s, tau), log_softmax(t, tau)
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    return total / len(s_rows)


def kl(s_rows, t_rows, tau):
    return kl_per_sample(s_rows, t_rows, tau) * tau ** 2


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


LABELS = torch.tensor(Y)


def test_plain_cross_entropy():
    out = method(build_criterion(False, 0.0))(tensor(S), LABELS)
    assert set(out) == {"loss", "base"}
    assert out["loss"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)


def test_label_smoothing():
    out = method(build_criterion(False, 0.1))(tensor(S), LABELS)
    assert out["loss"].item() == pytest.approx(smoothed_ce(S, Y, 0.1), rel=1e-6)
    assert out["loss"].item() != pytest.approx(ce(S, Y), rel=1e-3)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_soft_distillation_kl_with_tau_squared(tau):
    got = soft_distillation(tensor(S), tensor(T), tau).item()
    expected = {1.0: 1.0, 2.0: 4.0}[tau] * kl_per_sample(S, T, tau)  # tau^2 written out
    assert got == pytest.approx(expected, rel=1e-6)
    # batchmean, not DeiT's numel: the per-sample KL, C=3 times what dividing by B*C would give
    assert got != pytest.approx(expected / 3, rel=1e-3)
    assert soft_distillation(tensor(T), tensor(T), tau).item() == pytest.approx(0.0, abs=1e-6)


def test_hard_distillation_uses_teacher_argmax():
    assert hard_distillation(tensor(S), tensor(T)).item() == pytest.approx(ce(S, [0, 2]), rel=1e-6)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_alpha_mix(kind):
    alpha, tau = 0.3, 2.0
    out = method(build_criterion(False, 0.0), kind, alpha=alpha, tau=tau)(tensor(S), LABELS, tensor(T))
    distill = kl(S, T, tau) if kind == "soft" else ce(S, [0, 2])
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert out["distill"].item() == pytest.approx(distill, rel=1e-6)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce(S, Y) + alpha * distill, rel=1e-6)


def test_tuple_path_class_head_on_labels_dist_head_on_teacher():
    alpha, tau = 0.5, 1.0
    out = method(build_criterion(False, 0.0), "soft", alpha, tau)((tensor(S), tensor(D)), LABELS, tensor(T))
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert out["distill"].item() == pytest.approx(kl(D, T, tau), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * ce(S, Y) + 0.5 * kl(D, T, tau), rel=1e-6)


def test_gradients_reach_both_heads_with_hand_values():
    alpha, tau = 0.25, 2.0
    cls, dist = tensor(S, grad=True), tensor(D, grad=True)
    loss = method(build_criterion(False, 0.0), "soft", alpha, tau)((cls, dist), LABELS, tensor(T))["loss"]
    loss.backward()
    for i in range(2):
        p = [math.exp(v) for v in log_softmax(S[i])]
        ps, pt = [math.exp(v) for v in log_softmax(D[i], tau)], [math.exp(v) for v in log_softmax(T[i], tau)]
        for c in range(3):  # d CE / d z = (p - onehot) / B; d tau^2 KL / d z = tau (p_s - p_t) / B
            assert cls.grad[i, c].item() == pytest.approx((1 - alpha) * (p[c] - (c == Y[i])) / 2, abs=1e-6)
            assert dist.grad[i, c].item() == pytest.approx(alpha * tau * (ps[c] - pt[c]) / 2, abs=1e-6)
    assert cls.grad.abs().sum() > 0 and dist.grad.abs().sum() > 0


def test_soft_target_cross_entropy_with_mixed_targets():
    targets = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]
    expected = sum(-sum(q * l for q, l in zip(t, log_softmax(r))) for r, t in zip(S, targets)) / 2
    criterion = build_criterion(True, 0.1)  # smoothing is folded into Mixup's targets, not applied again
    assert isinstance(criterion, SoftTargetCrossEntropy)
    out = method(criterion)(tensor(S), tensor(targets))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_build_criterion_choices():
    assert isinstance(build_criterion(False, 0.1), LabelSmoothingCrossEntropy)
    assert isinstance(build_criterion(False, 0.0), torch.nn.CrossEntropyLoss)


def test_tuple_without_teacher_is_refused():
    with pytest.raises(ValueError, match="distill.type=none"):
        method(build_criterion(False, 0.0))((tensor(S), tensor(D)), LABELS)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_missing_teacher_logits(kind):
    with pytest.raises(ValueError, match="needs the teacher's logits"):
        method(build_criterion(False, 0.0), kind)(tensor(S), LABELS)


def test_teacher_class_count_mismatch_and_bad_type():
    with pytest.raises(ValueError, match="same classes"):
        method(build_criterion(False, 0.0), "soft")(tensor(S), LABELS, torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="distill.type='fitnet' is not one of: none, soft, hard, kd, dkd, dist, feature"):
        load_config(None, ["distill.type=fitnet"])


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_deit_kl_reduction_is_sum_over_numel(tau):
    """DeiT's losses.py: kl_div(..., reduction='sum') * tau^2 / outputs.numel(), by hand on 2 x 3 logits."""
    summed = sum(math.exp(a) * (a - b) for s, t in zip(S, T)
                 for a, b in zip(log_softmax(t, tau), log_softmax(s, tau)))  # KL summed over all 6 elements
    expected = summed * tau ** 2 / 6  # numel = B * C = 2 * 3
    assert soft_distillation(tensor(S), tensor(T), tau, "deit").item() == pytest.approx(expected, rel=1e-6)
    assert soft_distillation(tensor(S), tensor(T), tau).item() == pytest.approx(3 * expected, rel=1e-6)  # ours: x C
    out = method(build_criterion(False, 0.0), "soft", 0.5, tau, kl_reduction="deit")(tensor(S), LABELS,
                                                                                               tensor(T))
    assert out["distill"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="kl_reduction"):
        load_config(None, ["distill.kl_reduction=mean"])


# --- classic KD and DKD


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_is_the_batch_mean_kl_times_tau_squared(tau):
    got = kd_distillation(tensor(S), tensor(T), tau).item()
    assert got == pytest.approx({1.0: 1.0, 4.0: 16.0}[tau] * kl_per_sample(S, T, tau), rel=1e-6)  # tau^2 written out
    alpha = 0.9
    out = method(build_criterion(False, 0.0), "kd", alpha=alpha, tau=tau)(tensor(S), LABELS, tensor(T))
    assert set(out) == {"loss", "base", "distill", "kd"}
    assert out["kd"].item() == out["distill"].item() == pytest.approx(kl(S, T, tau), rel=1e-6)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce(S, Y) + alpha * kl(S, T, tau), rel=1e-6)


def test_kd_refuses_a_distillation_token():
    with pytest.raises(ValueError, match="distill.type=kd trains one head"):
        method(build_criterion(False, 0.0), "kd")((tensor(S), tensor(D)), LABELS, tensor(T))


def test_dkd_fully_written_out():
    """Student uniform [0, 0, 0]; teacher [log 2, 0, 0] -> p_t = [1/2, 1/4, 1/4]; tau = 1."""
    student, teacher = tensor([[0.0, 0.0, 0.0]]), tensor([[math.log(2), 0.0, 0.0]])
    # target 0: binary teacher [1/2, 1/2], student [1/3, 2/3]; non-targets [1/2, 1/2] in both -> NCKD 0
    tckd, nckd = dkd_terms(student, teacher, torch.tensor([0]), 1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3)), rel=1e-5)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)
    # target 1: binary teacher [1/4, 3/4], student [1/3, 2/3]; non-targets {0, 2}: [2/3, 1/3] vs [1/2, 1/2]
    tckd, nckd = dkd_terms(student, teacher, torch.tensor([1]), 1.0)
    assert tckd.item() == pytest.approx(0.25 * math.log(0.25 / (1 / 3)) + 0.75 * math.log(0.75 / (2 / 3)), rel=1e-5)
    assert nckd.item() == pytest.approx(2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5), rel=1e-5)


def dkd_by_hand(s_rows, t_rows, labels, tau):
    """(TCKD, NCKD) by hand: batch means of the binary and the renormalised non-target KLs, times tau^2."""
    tckd = nckd = 0.0
    for s, t, y in zip(s_rows, t_rows, labels):
        ps, pt = [math.exp(v) for v in log_softmax(s, tau)], [math.exp(v) for v in log_softmax(t, tau)]
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd += sum(q * math.log(q / r) for q, r in zip(bt, bs))
        qs = [p / (1 - ps[y]) for k, p in enumerate(ps) if k != y]
        qt = [p / (1 - pt[y]) for k, p in enumerate(pt) if k != y]
        nckd += sum(q * math.log(q / r) for q, r in zip(qt, qs))
    n = len(s_rows)
    return tckd / n * tau ** 2, nckd / n * tau ** 2


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_terms_by_hand_and_the_kd_decomposition(tau):
    tckd, nckd = dkd_terms(tensor(S), tensor(T), LABELS, tau)
    h_tckd, h_nckd = dkd_by_hand(S, T, Y, tau)
    assert tckd.item() == pytest.approx(h_tckd, rel=1e-5) and nckd.item() == pytest.approx(h_nckd, rel=1e-5)
    # Zhao et al. eq. 1: KD = TCKD + (1 - p_target^teacher) * NCKD, per sample (here sample 0)
    pt = math.exp(log_softmax(T[0], tau)[Y[0]])
    one_tckd, one_nckd = dkd_terms(tensor(S[:1]), tensor(T[:1]), LABELS[:1], tau)
    assert (one_tckd + (1 - pt) * one_nckd).item() == pytest.approx(kl(S[:1], T[:1], tau), rel=1e-5)


def test_dkd_weights_keys_and_distillation_head():
    alpha, tau, a, b = 0.5, 2.0, 1.5, 8.0
    loss = method(build_criterion(False, 0.0), "dkd", alpha, tau, dkd_alpha=a, dkd_beta=b)
    out = loss((tensor(S), tensor(D)), LABELS, tensor(T))  # with a token: DKD on the distillation head
    assert set(out) == {"loss", "base", "distill", "dkd_tckd", "dkd_nckd", "dkd_warmup"}
    h_tckd, h_nckd = dkd_by_hand(D, T, Y, tau)
    assert out["dkd_tckd"].item() == pytest.approx(h_tckd, rel=1e-5)
    assert out["dkd_nckd"].item() == pytest.approx(h_nckd, rel=1e-5)
    assert out["distill"].item() == pytest.approx(a * h_tckd + b * h_nckd, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - alpha) * ce(S, Y) + alpha * (a * h_tckd + b * h_nckd), rel=1e-5)


def test_dkd_gradients_are_finite_through_the_mask():
    student = tensor(S, grad=True)
    out = method(build_criterion(False, 0.0), "dkd", 0.5, 4.0)(student, LABELS, tensor(T))
    out["loss"].backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_the_method_reads_every_key_of_its_config():
    cfg = DistillConfig(type="dkd", alpha=0.3, tau=2.0, dkd_alpha=0.5, dkd_beta=2.0)
    loss = build_method(cfg, build_criterion(False, 0.0))
    assert (loss.name, loss.alpha, loss.tau, loss.dkd_alpha, loss.dkd_beta) == ("dkd", 0.3, 2.0, 0.5, 2.0)


F_S = [[1.0, -2.0], [0.5, 3.0]]  # projected student features, 2 samples x 2 channels
F_T = [[0.0, 0.0], [2.5, 1.0]]  # teacher features


def test_feature_term_is_the_mean_squared_error_by_hand():
    by_hand = ((1 - 0) ** 2 + (-2 - 0) ** 2 + (0.5 - 2.5) ** 2 + (3 - 1) ** 2) / 4  # = 13 / 4
    assert by_hand == 3.25
    out = method(build_criterion(False, 0.0), "feature", alpha=0.3)((tensor(S), tensor(F_S)), LABELS,
                                                                              tensor(F_T))
    assert set(out) == {"loss", "base", "distill"}
    assert out["distill"].item() == pytest.approx(by_hand, rel=1e-6)
    assert out["base"].item() == pytest.approx(ce(S, Y), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.7 * ce(S, Y) + 0.3 * by_hand, rel=1e-6)


def test_feature_term_gradient_reaches_the_features_by_hand():
    feats = tensor(F_S, grad=True)
    out = method(build_criterion(False, 0.0), "feature", alpha=1.0)((tensor(S), feats), LABELS, tensor(F_T))
    out["loss"].backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / numel
    expected = [[2 * (s - t) / 4 for s, t in zip(rs, rt)] for rs, rt in zip(F_S, F_T)]
    assert torch.allclose(feats.grad, torch.tensor(expected))
