import math

import pytest
import timm
import torch

import students  # noqa: F401
from distill.profile import count_params, forward_gflops

SIZES = {"distill_vit_tiny": (4, 256, 4), "distill_vit_small": (6, 384, 6),
         "distill_vit_medium": (9, 576, 9), "distill_vit_base": (12, 768, 12)}


def expected_params(depth, dim, classes=10, chans=3, patch=8, img=32, distilled=False):
    """Written out: patch conv, tokens, position embedding, blocks, final norm, head(s)."""
    tokens = (img // patch) ** 2 + (2 if distilled else 1)
    per_block = (2 * 2 * dim                     # two LayerNorms
                 + dim * 3 * dim + 3 * dim         # qkv
                 + dim * dim + dim                 # proj
                 + dim * 4 * dim + 4 * dim         # fc1
                 + 4 * dim * dim + dim)            # fc2
    heads = (2 if distilled else 1) * (dim * classes + classes)
    return (chans * patch * patch * dim + dim) + dim * (2 if distilled else 1) + tokens * dim \
        + depth * per_block + 2 * dim + heads


def test_family_is_registered():
    assert sorted(timm.list_models("distill_vit_*")) == sorted(SIZES)


@pytest.mark.parametrize("name", SIZES)
def test_forward_backward_and_param_count(name):
    depth, dim, heads = SIZES[name]
    model = timm.create_model(name, num_classes=10)
    assert (len(model.blocks), model.embed_dim, model.blocks[0].attn.num_heads) == (depth, dim, heads)
    assert count_params(model) == expected_params(depth, dim)
    x = torch.randn(1 if name == "distill_vit_base" else 2, 3, 32, 32)
    out = model(x)
    assert out.shape == (x.shape[0], 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_tiny_is_the_seed_model():
    model = timm.create_model("distill_vit_tiny", num_classes=10)
    assert 3.1e6 < count_params(model) < 3.3e6
    assert model.patch_embed.kernel_size == (8, 8) and model.pos_embed.shape == (1, 17, 256)
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
    assert torch.allclose(model(x[2:3])[0], base[2], atol=1e-5)  # batch size does not matter either


def test_distillation_token_switch_is_explicit():
    model = timm.create_model("distill_vit_tiny", num_classes=10, distilled=True)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert isinstance(model(x), torch.Tensor)  # not switched on: one tensor, even in training
    model.set_distilled_training(True)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 10)
    model.eval()
    mean = model(x)
    c, d = model.forward_heads(x)
    assert torch.allclose(mean, (c + d) / 2)
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    assert count_params(model) == expected_params(4, 256, distilled=True)
    with pytest.raises(AssertionError, match="distilled=True"):
        timm.create_model("distill_vit_tiny").set_distilled_training(True)


def test_kwargs_pass_through():
    model = timm.create_model("distill_vit_small", num_classes=7, in_chans=1, img_size=28, patch_size=4,
                              drop_path_rate=0.1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.pos_embed.shape == (1, 50, 384)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    with pytest.raises(AssertionError, match="divisible"):
        timm.create_model("distill_vit_tiny", img_size=30)


def test_attention_matches_a_naive_reference():
    torch.manual_seed(0)
    attn = timm.create_model("distill_vit_tiny").blocks[0].attn
    x = torch.randn(2, 17, 256)
    B, N, C, H = 2, 17, 256, 4
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // H), dim=-1)  # (B, H, N, N)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_forward_gflops_matches_a_hand_count():
    model = timm.create_model("distill_vit_tiny", num_classes=10)
    D, N, depth = 256, 17, 4
    macs = 3 * 64 * D * 16                                   # patch conv: 16 patches
    macs += depth * (N * D * 3 * D + N * D * D + 2 * N * D * 4 * D + 2 * N * N * D)  # linears + QK^T, AV
    macs += D * 10                                           # head on the class token
    assert forward_gflops(model, (3, 32, 32)) == pytest.approx(2 * macs / 1e9, rel=0.02)
