"""timm's model surface on the student family: intermediates, pruning, features_only, TorchScript,
torch.fx, gradient checkpointing, parameter groups. Tiny models (depth 4, 32x32, patch 8) only."""
import pytest
import timm
import torch
from timm.models import group_parameters
from timm.models._features import FeatureGetterNet

import students  # noqa: F401  (registers distill_vit_*)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny(distilled=False, **kwargs):
    torch.manual_seed(0)
    return timm.create_model("distill_vit_tiny", distilled=distilled, **kwargs).eval()


def block_outputs(model, x):
    """Each block's raw output (B, T, D), computed by hand."""
    h, outs = model._pos_embed(model.patch_embed(x)), []
    for blk in model.blocks:
        h = blk(h)
        outs.append(h)
    return outs


@pytest.mark.parametrize("distilled", [False, True])
def test_forward_intermediates_nchw_and_nlc(distilled):
    model, p = tiny(distilled), 2 if distilled else 1
    with torch.no_grad():
        ref = block_outputs(model, X)
        final, inter = model.forward_intermediates(X)  # all blocks, NCHW, no norm
        assert torch.equal(final, model.forward_features(X))
        assert len(inter) == 4 and all(t.shape == (2, 256, 4, 4) for t in inter)
        for t, r in zip(inter, ref):  # (B, D, h, w)[b, :, i, j] is patch token i * w + j
            assert torch.equal(t.flatten(2).transpose(1, 2), r[:, p:])
        nlc = model.forward_intermediates(X, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
        assert isinstance(nlc, list) and [t.shape for t in nlc] == [(2, 16, 256)] * 2
        assert torch.equal(nlc[0], ref[0][:, p:]) and torch.equal(nlc[1], ref[3][:, p:])
        last2 = model.forward_intermediates(X, indices=2, output_fmt="NLC", intermediates_only=True)
        assert torch.equal(last2[0], ref[2][:, p:]) and torch.equal(last2[1], ref[3][:, p:])
        normed = model.forward_intermediates(X, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
        assert torch.equal(normed[0], model.forward_features(X)[:, p:])  # the last, normed: the patch tokens
        pairs = model.forward_intermediates(X, indices=1, output_fmt="NLC", return_prefix_tokens=True,
                                            intermediates_only=True)
        assert pairs[0][1].shape == (2, p, 256) and torch.equal(pairs[0][1], ref[3][:, :p])
        early, inter_early = model.forward_intermediates(X, indices=[1], stop_early=True)
        assert torch.equal(inter_early[0], inter[1]) and not torch.equal(early, final)  # stopped after block 1
    with pytest.raises(AssertionError, match="output_fmt"):
        model.forward_intermediates(X, output_fmt="NHWC")
    with pytest.raises(AssertionError, match="out of range"):
        model.forward_intermediates(X, indices=5)


@pytest.mark.parametrize("distilled", [False, True])
def test_pruned_model_gives_the_same_intermediates(distilled):
    model, pruned = tiny(distilled), tiny(distilled)
    assert pruned.prune_intermediate_layers([0, 1], prune_norm=True) == [0, 1]
    assert len(pruned.blocks) == 2 and isinstance(pruned.norm, torch.nn.Identity) and pruned.num_classes == 0
    assert isinstance(pruned.head, torch.nn.Identity)
    assert isinstance(pruned.head_dist, torch.nn.Identity) if distilled else pruned.head_dist is None
    with torch.no_grad():
        full = model.forward_intermediates(X, indices=[0, 1], intermediates_only=True)
        cut = pruned.forward_intermediates(X, indices=[0, 1], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(full, cut))
    assert set(pruned.state_dict()) < set(model.state_dict())  # same names, fewer of them


def test_features_only_through_create_model():
    full = tiny()
    feats = timm.create_model("distill_vit_tiny", features_only=True).eval()
    assert isinstance(feats, FeatureGetterNet)
    assert feats.feature_info.channels() == [256] * 3 and feats.feature_info.reduction() == [8] * 3
    assert "num_classes" not in feats.pretrained_cfg and feats.pretrained_cfg["input_size"] == (3, 32, 32)
    missing = feats.model.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys  # the getter kept the blocks it needs, dropped the rest
    with torch.no_grad():
        out = feats(X)
        ref = full.forward_intermediates(X, indices=3, intermediates_only=True)
    assert [o.shape for o in out] == [(2, 256, 4, 4)] * 3 and all(torch.equal(a, b) for a, b in zip(out, ref))
    picked = timm.create_model("distill_vit_tiny", features_only=True, out_indices=(0, 2), in_chans=1)
    assert len(picked.model.blocks) == 3 and picked.pretrained_cfg["input_size"] == (1, 32, 32)


@pytest.mark.parametrize("distilled", [False, True])
def test_torchscript_matches_eager(distilled):
    model = tiny(distilled)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(X), model(X), rtol=0, atol=1e-6)
    if distilled:  # the distillation switch survives scripting: (class, distillation) logits in training
        model.set_distilled_training(True)
        scripted = torch.jit.script(model.train())
        with torch.no_grad():
            out, ref = scripted(X), model(X)
        assert isinstance(out, tuple) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, ref))


@pytest.mark.parametrize("distilled", [False, True])
def test_fx_trace_matches_eager(distilled):
    model = tiny(distilled)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(X), model(X))
    with pytest.raises(AssertionError, match="input height is not img_size=32"):  # the shape check is in the graph
        traced(torch.randn(1, 3, 28, 32))
    # timm's fx feature extraction: raw block outputs (B, T, D) of the blocks named in feature_info
    torch.manual_seed(0)
    fx_feats = timm.create_model("distill_vit_tiny", distilled=distilled, features_only=True,
                                 feature_cls="fx", out_indices=(1, 3)).eval()
    with torch.no_grad():
        out, ref = fx_feats(X), block_outputs(model, X)
    assert torch.equal(out[0], ref[1]) and torch.equal(out[1], ref[3])


def count_saved_tensors(model, x):
    """Tensors autograd keeps for backward in one forward, and that forward's output."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(x)
    return len(saved), out


@pytest.mark.parametrize("distilled", [False, True])
def test_grad_checkpointing_gives_the_same_gradients(distilled):
    grads, counts = [], []
    for enable in (False, True):
        model = tiny(distilled, drop_path_rate=0.2).train()  # drop path: the recompute must replay its RNG
        if distilled:
            model.set_distilled_training(True)
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        n, out = count_saved_tensors(model, X)
        loss = sum(o.square().sum() for o in out) if distilled else out.square().sum()
        loss.backward()
        counts.append(n)
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert counts[1] < counts[0] / 2  # the blocks' activations were not kept: checkpointing is on
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=0, atol=0, msg=k)


def test_group_matcher_orders_stem_blocks_head():
    model = tiny(distilled=True)
    groups = group_parameters(model, model.group_matcher())
    assert set(groups[0]) == {"cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight",
                              "patch_embed.proj.bias"}
    for i in range(4):
        assert all(n.startswith(f"blocks.{i}.") for n in groups[i + 1] if not n.startswith("norm."))
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_surface_attributes():
    model = tiny(distilled=True)
    assert model.num_features == model.head_hidden_size == 256
    assert model.feature_info[2] == dict(num_chs=256, reduction=8, module="blocks.2")
    assert model.forward_head(model.forward_features(X), pre_logits=True).shape == (2, model.head_hidden_size)
