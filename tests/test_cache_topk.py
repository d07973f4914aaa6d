"""Top-k teacher-logit cache (`distill.cache_topk`): the stored layout, the rest-mass rule, the exact argmax."""
import hashlib
import json
import math

import pytest
import torch

from distill.train.cache import LogitCache, resolve_topk, topk_decode, topk_encode
from distill.config import ConfigError
from distill.recipe import load_config
from distill.errors import CacheError

Z = [[2.0, 0.0, 1.0, -1.0, 0.5]]  # one view, 5 classes; top-2 are classes 0 and 2


def test_encode_stores_top_k_log_probabilities_and_log_rest_as_fp16_and_int16_indices():
    values, indices = topk_encode(torch.tensor(Z), 2)
    assert values.dtype == torch.float16 and indices.dtype == torch.int16
    assert values.shape == (1, 3) and indices.shape == (1, 2)  # k values, then the log rest
    lse = math.log(sum(math.exp(z) for z in Z[0]))
    rest = math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(0.5))  # classes 1, 3, 4
    assert indices.tolist() == [[0, 2]]
    assert values[0].float().tolist() == pytest.approx([2.0 - lse, 1.0 - lse, rest - lse],
                                                       abs=2 ** -11 * 3)  # fp16's rounding


def test_decode_by_hand_kept_classes_plus_uniform_rest():
    values, indices = topk_encode(torch.tensor(Z), 2)
    v0, v2, rest = values.float()[0].tolist()
    tail = rest - math.log(3)  # the stored mass of classes 1, 3, 4, spread evenly
    logits = topk_decode(values, indices, 5)
    assert logits.dtype == torch.float32
    assert logits[0].tolist() == pytest.approx([v0, tail, v2, tail, tail], rel=1e-6)
    probs = logits.softmax(-1)[0]  # exactly the rule's distribution at tau=1: it already sums to 1
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    true = torch.tensor(Z).softmax(-1)[0]
    assert probs[[0, 2]].tolist() == pytest.approx(true[[0, 2]].tolist(), rel=2e-3)  # kept: their own mass
    assert probs[[1, 3, 4]].sum().item() == pytest.approx(true[[1, 3, 4]].sum().item(), rel=2e-3)  # the rest
    assert probs[1] == probs[3] == probs[4]


def test_rest_mass_rule_and_temperature_on_many_classes():
    torch.manual_seed(0)
    z = torch.randn(64, 1000) * 3
    values, indices = topk_encode(z, 10)
    p = topk_decode(values, indices, 1000).softmax(-1)
    true = z.softmax(-1)
    kept = true.gather(-1, indices.long())
    # fp16 rounds log p (> -8 here) to within 2^-9, and softmax renormalises the separately rounded rest (< 1e-3)
    assert torch.allclose(p.gather(-1, indices.long()), kept, rtol=2.5e-3)
    others = torch.ones_like(p, dtype=torch.bool).scatter_(-1, indices.long(), False)
    tail = p[others].view(64, 990)
    assert torch.allclose(tail, tail[:, :1].expand_as(tail))  # uniform over the other 990 classes
    assert torch.allclose(tail.sum(-1), 1 - kept.sum(-1), rtol=2e-3, atol=1e-6)  # and it is the rest of the mass
    # at tau=2 the kept classes keep their exact ratios; the flat tail carries more than the true tail
    pt, truet = (topk_decode(values, indices, 1000) / 2).softmax(-1), (z / 2).softmax(-1)
    r = pt.gather(-1, indices.long()) / truet.gather(-1, indices.long())
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=2e-3)
    assert (pt[others].view(64, 990).sum(-1) > truet[others].view(64, 990).sum(-1)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_is_exact_even_where_fp16_ties(dtype):
    torch.manual_seed(0)
    z = torch.randn(4096, 100) * 4
    z[0] = -10.0
    z[0, :2] = torch.tensor([5.0, 5.0 + 2 ** -14])  # fp32: the larger at index 1, tied in fp16 log-probabilities
    z[1, :3] = 9.0  # an exact tie: argmax takes the first
    z[2] = 0.0  # all equal, k=1: the tail must not win
    z = z.to(dtype)  # bf16: many exact ties among the largest logits
    for k in (1, 2, 10):
        values, indices = topk_encode(z, k)
        assert torch.equal(topk_decode(values, indices, 100).argmax(-1), z.float().argmax(-1))
    assert z.float().argmax(-1)[:3].tolist() == [1 if dtype == torch.float32 else 0, 0, 0]
    assert values[0, 0] == values[0, 1]  # the case the nudge is for


def test_kept_mass_reaching_one_keeps_the_logits_finite():
    z = torch.tensor([[30.0, 0.0, 0.0, 0.0]])  # p0 rounds to 1 in fp16 and fp32: the rest is kept in log space
    values, indices = topk_encode(z, 1)
    assert values[0, 1].item() == pytest.approx(math.log(3) - 30.0, abs=2 ** -11 * 30)
    logits = topk_decode(values, indices, 4)
    assert torch.isfinite(logits).all() and logits.argmax().item() == 0
    assert logits.softmax(-1)[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    z = torch.tensor([[2.0, 0.0, -math.inf, -math.inf]])  # no rest at all: fp16's lowest, never -inf
    values, indices = topk_encode(z, 2)
    assert values[0, 2].item() == torch.finfo(torch.float16).min
    logits = topk_decode(values, indices, 4)
    assert torch.isfinite(logits).all() and logits.softmax(-1)[0, 2:].sum().item() == 0.0


def _soft_kl_to_uniform(teacher: torch.Tensor, tau: float) -> float:
    """By hand: KL(softmax(t / tau) || softmax(0 / tau)) summed over classes, times tau^2 (one view)."""
    p = (teacher / tau).log_softmax(-1)
    q = torch.zeros_like(teacher).log_softmax(-1)
    return ((p.exp() * (p - q)).sum(-1) * tau ** 2).item()


@pytest.mark.parametrize("k, lead", [(5, 25.0), (100, 30.0)])
def test_confident_teachers_tail_survives_temperature(k, lead):
    """fp32 rounds log p of a class leading by ~20 to 0, so 1 - sum(kept p) is 0 and a tail rebuilt from it
    vanishes at any tau (it read 109.6 instead of 27.5 at k=5, lead 25). The stored log rest keeps it."""
    z = torch.zeros(1, 1000)
    z[0, 0] = lead
    assert z.log_softmax(-1)[0, 0].item() == 0.0  # the case: the kept mass is exactly 1 in fp32
    decoded = topk_decode(*topk_encode(z, k), 1000)
    assert _soft_kl_to_uniform(decoded, 4.0) == pytest.approx(_soft_kl_to_uniform(z, 4.0), rel=1e-2)


def test_topk_bounds():
    assert resolve_topk(None, 10) is None and resolve_topk(0, 10) is None
    assert resolve_topk(10, 10) is None  # k covers every class: dense, bit-identical to a live run
    assert resolve_topk(3, 10) == 3
    with pytest.raises(ConfigError, match=r"^distill\.cache_topk=11 is larger than the dataset's 10 classes"):
        resolve_topk(11, 10)
    with pytest.raises(ConfigError, match="int16"):
        resolve_topk(10, 40000)
    with pytest.raises(ConfigError, match=r"distill\.cache_topk=-1 must be >= 0"):
        load_config(None, ["distill.cache_topk=-1"])
    cached = ["distill.type=soft", "teacher.model=resnet18", "distill.cache=true"]  # top-k shapes the cache only
    assert load_config(None, [*cached, "distill.cache_topk=100"]).distill.cache_topk == 100


def test_replay_check_compares_top_k_values_and_classes(tmp_path):
    torch.manual_seed(0)
    z = torch.randn(3, 8, 20) * 4  # an epoch: 3 steps of 8 views, 20 classes
    cache = LogitCache(tmp_path, {"k": 1}, 0, 1, steps_per_epoch=3, topk=5, num_classes=20)
    assert cache.start_epoch(0, 0, "cpu") is False
    for step in range(3):
        cache.put(step, z[step])
    cache.end_epoch(0)
    dense = LogitCache(tmp_path, {"k": 1}, 0, 1, steps_per_epoch=3)
    assert dense.dir != cache.dir  # k is part of the key
    digest = lambda key: hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    assert dense.dir.name == digest({"k": 1})  # a dense cache keeps its folder
    assert cache.dir.name != digest({"k": 1, "topk": 5})  # layout 1 (k values, no rest) is never read back
    assert cache.start_epoch(0, 0, "cpu") is True
    assert cache.replay["values"].shape == (3, 8, 6) and cache.replay["indices"].shape == (3, 8, 5)
    assert cache.replay["indices"].dtype == torch.int16
    assert torch.equal(cache.get(1).argmax(-1), z[1].argmax(-1))
    cache.check(0, z[0], "here")  # the live teacher agrees
    cache.check(0, z[0] + 7.0, "here")  # a shift of every logit is the same distribution
    swapped, rows = z[0].clone(), torch.arange(8)
    top, bottom = z[0].argmax(-1), z[0].argmin(-1)
    swapped[rows, top], swapped[rows, bottom] = z[0][rows, bottom], z[0][rows, top]  # same values, other classes
    with pytest.raises(CacheError, match="cache is stale"):
        cache.check(0, swapped, "here")
    with pytest.raises(CacheError, match="cache is stale"):
        cache.check(0, z[0] * 1.5, "here")


def test_replay_check_compares_the_rest(tmp_path):
    z = torch.zeros(1, 4, 20)
    z[0, :, :5] = 10.0  # the top 5 hold nearly all the mass: a change in the tail hardly moves them
    cache = LogitCache(tmp_path, {"k": 1}, 0, 1, steps_per_epoch=1, topk=5, num_classes=20)
    cache.start_epoch(0, 0, "cpu")
    cache.put(0, z[0])
    cache.end_epoch(0)
    assert cache.start_epoch(0, 0, "cpu") is True
    cache.check(0, z[0], "here")
    with pytest.raises(CacheError, match="cache is stale"):
        cache.check(0, torch.cat([z[0, :, :5], z[0, :, 5:] - 10.0], dim=-1), "here")  # same top 5, another tail


def test_hard_loss_is_unchanged_and_soft_loss_is_the_rules():
    """Through the registered methods: hard on the reconstruction equals hard on the logits; soft is the KL to
    the rest-mass rule's distribution, which differs from the KL to the teacher's own."""
    from distill.recipe import DistillConfig
    from distill.methods import build_criterion, build_method
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16, 10), torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    decoded = topk_decode(*topk_encode(teacher, 3), 10)
    hard = build_method(DistillConfig(type="hard"), build_criterion(False, 0.0))
    assert torch.equal(hard(student, labels, decoded)["loss"], hard(student, labels, teacher)["loss"])
    soft = build_method(DistillConfig(type="soft", tau=1.0), build_criterion(False, 0.0))
    rule = decoded.softmax(-1)  # by hand: KL(rule || student), batch mean
    by_hand = (rule * (rule.log() - student.log_softmax(-1))).sum(-1).mean()
    assert soft(student, labels, decoded)["distill"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert soft(student, labels, decoded)["distill"].item() != pytest.approx(
        soft(student, labels, teacher)["distill"].item(), rel=1e-3)
