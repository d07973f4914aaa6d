"""The student family: registry, shapes, parameter counts, FLOPs, distillation-token switch."""
import math

import pytest
import timm
import torch
from timm.models import VisionTransformer
from timm.models.deit import VisionTransformerDistilled

import students
from distill.models.cost import count_params, forward_gflops

SIZES = {"distill_vit_tiny": (4, 256, 4), "distill_vit_small": (6, 384, 6),  # (depth, embed_dim, heads)
         "distill_vit_medium": (9, 576, 9), "distill_vit_base": (12, 768, 12)}
DEIT = {"distill_vit_deit_tiny": (12, 192, 3), "distill_vit_deit_small": (12, 384, 6),
        "distill_vit_deit_base": (12, 768, 12)}  # DeiT's sizes, patch 16 at 224


def expected_params(depth, dim, classes=10, chans=3, patch=8, img=32, distilled=False):
    """Written out: patch conv, tokens, position embedding, blocks, final norm, head(s)."""
    prefix = 2 if distilled else 1
    tokens = (img // patch) ** 2 + prefix
    per_block = (2 * 2 * dim                       # two LayerNorms (weight, bias)
                 + dim * 3 * dim + 3 * dim         # qkv
                 + dim * dim + dim                 # proj
                 + dim * 4 * dim + 4 * dim         # fc1
                 + 4 * dim * dim + dim)            # fc2
    return ((chans * patch * patch * dim + dim)    # patch conv
            + prefix * dim + tokens * dim          # cls [+ dist] tokens, position embedding
            + depth * per_block + 2 * dim          # blocks, final norm
            + prefix * (dim * classes + classes))  # head [+ head_dist]


def test_family_is_registered_under_its_own_prefix():
    assert sorted(timm.list_models("distill_vit_*")) == sorted([*SIZES, *DEIT])
    assert students.DistillViT is type(timm.create_model("distill_vit_tiny"))


@pytest.mark.parametrize("name", SIZES)
def test_forward_backward_and_param_count(name):
    depth, dim, heads = SIZES[name]
    model = timm.create_model(name, num_classes=10)
    assert (len(model.blocks), model.embed_dim, model.blocks[0].attn.num_heads) == (depth, dim, heads)
    assert model.blocks[0].attn.head_dim == 64 and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert count_params(model) == expected_params(depth, dim)
    x = torch.randn(1 if name == "distill_vit_base" else 2, 3, 32, 32)  # base: batch 1 keeps it cheap
    out = model(x)
    assert out.shape == (x.shape[0], 10)
    out.square().sum().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"missing or non-finite grads: {bad[:5]}"


def test_tiny_is_the_seed_model():
    model = timm.create_model("distill_vit_tiny", num_classes=10)
    assert 3.1e6 < count_params(model) < 3.3e6
    assert model.patch_embed.proj.kernel_size == (8, 8) and model.pos_embed.shape == (1, 17, 256)
    assert model.blocks[0].mlp.fc1.out_features == 4 * 256


@pytest.mark.parametrize("distilled", [False, True])
def test_each_sample_depends_only_on_itself(distilled):
    torch.manual_seed(0)
    model = timm.create_model("distill_vit_tiny", num_classes=10, distilled=distilled).eval()
    x = torch.randn(4, 3, 32, 32)
    base = model(x)
    x2 = x.clone()
    x2[1] = torch.randn(3, 32, 32)
    out = model(x2)
    assert torch.allclose(out[[0, 2, 3]], base[[0, 2, 3]], atol=1e-6)
    assert not torch.allclose(out[1], base[1], atol=1e-3)


def test_distillation_token_switch_is_explicit():
    model = timm.create_model("distill_vit_tiny", num_classes=10, distilled=True)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert isinstance(model(x), torch.Tensor)  # not switched on: one tensor, even in training
    model.set_distilled_training(True)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (2, 10)
    model.eval()
    mean = model(x)
    c, d = model.forward_heads(x)
    assert not torch.allclose(c, d, atol=1e-4)  # two distinct heads, so the mean is a real check
    assert torch.allclose(mean, (c + d) / 2, atol=1e-6)
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    assert count_params(model) == expected_params(4, 256, distilled=True)
    assert model.pretrained_cfg["classifier"] == ("head", "head_dist")


def test_plain_model_refuses_distilled_calls():
    model = timm.create_model("distill_vit_tiny")
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    with pytest.raises(RuntimeError, match="distilled=True"):
        model.forward_heads(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="distilled=True"):
        model.set_distilled_training(True)


def test_kwargs_pass_through():
    model = timm.create_model("distill_vit_tiny", num_classes=7, in_chans=1, img_size=28, patch_size=4,
                              drop_path_rate=0.1, distilled=True)
    model.set_distilled_training(True)
    cls, dist = model(torch.randn(2, 1, 28, 28))
    assert cls.shape == dist.shape == (2, 7)
    assert model.pos_embed.shape == (1, 2 + 49, 256)
    rates = [b.drop_path.drop_prob if b.drop_path.__class__.__name__ == "DropPath" else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])  # linear over depth
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["mean"], cfg["num_classes"]) == ((1, 28, 28), (0.5,), 7)
    assert model.default_cfg is cfg and cfg["architecture"] == "distill_vit_tiny"
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)


def test_bad_sizes_are_refused_with_a_message():
    """Constructor checks are ValueErrors naming the fix; forward-time ones are timm's traceable `_assert`."""
    with pytest.raises(ValueError, match="img_size 30 must be divisible by patch_size 8: change data.img_size "
                                         "or student.patch_size"):
        timm.create_model("distill_vit_tiny", img_size=30)
    with pytest.raises(ValueError, match="embed_dim 256 must be divisible by num_heads 3: change embed_dim"):
        timm.create_model("distill_vit_tiny", num_heads=3)
    with pytest.raises(ValueError, match=r"img_size \(32, 28\) must be one int or a square"):
        timm.create_model("distill_vit_tiny", img_size=(32, 28))
    with pytest.raises(AssertionError, match="input height is not img_size=32"):
        timm.create_model("distill_vit_tiny")(torch.randn(1, 3, 28, 32))
    with pytest.raises(AssertionError, match="input width is not img_size=32"):
        timm.create_model("distill_vit_tiny")(torch.randn(1, 3, 32, 28))
    assert timm.create_model("distill_vit_tiny", img_size=(28, 28), patch_size=4).patch_embed.img_size == 28


def test_reset_classifier():
    model = timm.create_model("distill_vit_tiny", distilled=True)
    model.reset_classifier(5)
    assert model.num_classes == 5 and [h.out_features for h in model.get_classifier()] == [5, 5]
    model.reset_classifier(0)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 256)  # features, heads removed


def test_attention_matches_a_naive_reference():
    torch.manual_seed(0)
    block = timm.create_model("distill_vit_tiny").blocks[0]
    B, N, C, H = 2, 17, 256, 4
    x = torch.randn(B, N, C)
    q, k, v = block.attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)  # each (B, H, N, hd)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // H), dim=-1)  # (B, H, N, N)
    ref = block.attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(block.attn(x), ref, atol=1e-5)
    # The whole block by hand: pre-norm residuals, GELU MLP.
    a = block.attn.qkv(block.norm1(x)).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    w = torch.softmax(a[0] @ a[1].transpose(-2, -1) / math.sqrt(C // H), dim=-1)
    h = x + block.attn.proj((w @ a[2]).transpose(1, 2).reshape(B, N, C))
    ref_block = h + block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(block.norm2(h))))
    assert torch.allclose(block(x), ref_block, atol=1e-5)


@pytest.mark.parametrize("distilled", [False, True])
def test_same_function_as_timm_vision_transformer(distilled):
    """Same parameter names and the same function as timm's ViT / DeiT-distilled of these sizes."""
    torch.manual_seed(0)
    ours = timm.create_model("distill_vit_tiny", num_classes=10, distilled=distilled).eval()
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    ref = cls(img_size=32, patch_size=8, num_classes=10, embed_dim=256, depth=4, num_heads=4).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_forward_gflops_matches_a_hand_count():
    model = timm.create_model("distill_vit_tiny", num_classes=10).train()
    D, N, depth = 256, 17, 4
    linear_macs = 3 * 64 * D * 16                                  # patch conv: 16 patches
    linear_macs += depth * N * (3 * D * D + D * D + 2 * 4 * D * D)  # qkv, proj, fc1, fc2
    linear_macs += D * 10                                          # head on the class token
    attn_macs = depth * 2 * N * N * D                              # q k^T and attn v, all heads
    gflops = forward_gflops(model, (3, 32, 32))
    # Exact, not within 10%: attention is ~1% of the total, so a loose check would miss it uncounted.
    assert gflops == pytest.approx(2 * (linear_macs + attn_macs) / 1e9, rel=1e-9)
    assert forward_gflops(model, (4, 3, 32, 32)) == pytest.approx(gflops)  # per image
    assert forward_gflops(model) == pytest.approx(gflops)  # input size from pretrained_cfg
    assert model.training  # mode restored


@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_deit_sizes_have_timms_parameter_counts(size, distilled):
    """With the token: timm's deit_*_distilled_patch16_224; without: deit_*_patch16_224 (no weights fetched)."""
    ours = timm.create_model(f"distill_vit_deit_{size}", distilled=distilled, num_classes=1000, in_chans=3,
                             img_size=224)
    ref = timm.create_model(f"deit_{size}_{'distilled_' if distilled else ''}patch16_224", pretrained=False)
    assert count_params(ours) == count_params(ref)
    depth, dim, heads = DEIT[f"distill_vit_deit_{size}"]
    assert count_params(ours) == expected_params(depth, dim, classes=1000, patch=16, img=224, distilled=distilled)
    assert (len(ours.blocks), ours.embed_dim, ours.blocks[0].attn.num_heads) == (depth, dim, heads)


def test_deit_defaults_are_imagenet_at_224():
    model = timm.create_model("distill_vit_deit_small")
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["num_classes"], model.num_classes) == ((3, 224, 224), 1000, 1000)
    assert (cfg["mean"], cfg["std"]) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model.patch_embed.proj.kernel_size == (16, 16) and model.pos_embed.shape == (1, 1 + 196, 384)
    assert timm.create_model("distill_vit_tiny").pretrained_cfg["input_size"] == (3, 32, 32)  # the seed's unchanged


@pytest.mark.parametrize("name", DEIT)
def test_deit_forward_backward_at_224(name):
    """Batch 1 at the native size, distilled: both heads get gradients (base: ~1.5 s on 2 CPU cores)."""
    torch.manual_seed(0)
    model = timm.create_model(name, distilled=True, drop_path_rate=0.1)
    model.train().set_distilled_training(True)
    cls, dist = model(torch.randn(1, 3, 224, 224))
    assert cls.shape == dist.shape == (1, 1000)
    (cls.logsumexp(-1) + dist.logsumexp(-1)).sum().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"missing or non-finite grads: {bad[:5]}"


def timm_test_input_size(cfg, target):
    """timm's tests/test_models.py `_get_input_size`: the cfg's input_size if it says `fixed_input_size`;
    else, where its largest side exceeds the test's `target`, its `min_input_size` or the sides clamped."""
    input_size = cfg["input_size"]
    if cfg.get("fixed_input_size") or max(input_size) <= target:
        return input_size
    return cfg.get("min_input_size") or tuple(min(s, target) for s in input_size)


@pytest.mark.parametrize("name", [*SIZES, *DEIT])
def test_timms_model_tests_feed_each_student_a_size_it_takes(name):
    """timm's model tests size each input from a cfg: the registry's (backward, TorchScript, fx) or the
    built model's default_cfg (forward, features), with a target side per test (forward 384, backward,
    TorchScript and fx 128, features 96). Built as registered, the model must take what that gives: the
    DeiT sizes were fed 96-128 px and refused it (21 failures) until their cfgs said `fixed_input_size`,
    as timm's deit_* do. A `dynamic_img_size` build says it is not fixed, and takes the smaller sizes."""
    registry = {k: timm.models.get_pretrained_cfg_value(name, k)
                for k in ("input_size", "fixed_input_size", "min_input_size")}
    for kwargs in ({}, {"dynamic_img_size": True}):
        torch.manual_seed(0)
        model = timm.create_model(name, depth=1, num_classes=42, **kwargs)  # one block: sizes are checked before it
        cfgs = [model.default_cfg] if kwargs else [registry, model.default_cfg]
        sizes = {timm_test_input_size(cfg, target) for cfg in cfgs for target in (384, 128, 96)}
        for size in sorted(sizes):
            out = model.train()(torch.randn(2, *size))  # test_model_backward: batch 2, train mode
            out.mean().backward()
            assert out.shape == (2, 42) and all(p.grad is not None for p in model.parameters())
        assert all(bool(cfg.get("fixed_input_size")) is not bool(kwargs) for cfg in cfgs), \
            f"{name} {kwargs}: its cfg must say fixed_input_size={not kwargs}, or timm's tests feed it other sizes"
        native = registry["input_size"]  # forward's target 384 feeds even a dynamic DeiT its 224
        assert sizes == ({native, (3, 128, 128), (3, 96, 96)} if kwargs and name in DEIT else {native}), sizes
