"""A student started from weights and the position embedding at other sizes:
`student.checkpoint` (a timm/DeiT file, a run folder, an export folder) through timm's loader, the same
through `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`, and
`dynamic_img_size=True` as timm's VisionTransformer has it. No weights can be downloaded here: the
checkpoints are timm models with random weights, saved the way DeiT and timm publish them."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

import students  # noqa: F401  (registers distill_vit_*)
from conftest import needs_fmnist, run_main
from distill.errors import ConfigError
from timm.models import adapt_input_conv


def load_start(model, path, in_chans):
    from distill.train.start import load_start as start  # here: each test reports its own failure without it
    return start(model, path, in_chans)


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    """timm's DeiT-Ti with the distillation token, random weights, saved as DeiT's release files are."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224").eval()
    path = tmp_path_factory.mktemp("deit") / "deit_tiny_distilled_patch16_224.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def ours(distilled=True, **kwargs):
    torch.manual_seed(1)
    return timm.create_model("distill_vit_deit_tiny", distilled=distilled, **kwargs).eval()


def test_deit_checkpoint_gives_timms_logits_at_224(deit):
    ref, path = deit
    x = torch.randn(2, 3, 224, 224)
    model = load_start(ours(), path, in_chans=3)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))  # bit for bit: same tensors, same function
        tokens = ref.forward_features(x)
        cls, dist = model.forward_heads(x)
        assert torch.equal(cls, ref.head(tokens[:, 0])) and torch.equal(dist, ref.head_dist(tokens[:, 1]))


def test_the_token_is_kept_dropped_or_added_as_the_student_asks(deit, tmp_path):
    ref, path = deit
    plain = load_start(ours(distilled=False), path, in_chans=3)  # dropped: cls row + patch rows remain
    pe = ref.pos_embed
    assert torch.equal(plain.pos_embed, torch.cat([pe[:, :1], pe[:, 2:]], 1)) and plain.dist_token is None
    assert torch.equal(plain.cls_token, ref.cls_token) and torch.equal(plain.head.weight, ref.head.weight)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")  # a checkpoint without the token ...
    added = load_start(ours(), tmp_path / "plain.pth", in_chans=3)  # ... into a distilled student: copies of cls
    assert torch.equal(added.dist_token, plain.cls_token) and torch.equal(added.head_dist.weight, plain.head.weight)
    assert torch.equal(added.pos_embed[:, 1], plain.pos_embed[:, 0])


def test_deit_checkpoint_starts_a_student_at_32_px(deit):
    """Fashion-MNIST's shape: 1 channel, 10 classes, 32 px with patch 4 (an 8x8 grid from DeiT's 14x14)."""
    ref, path = deit
    model = load_start(ours(img_size=32, patch_size=4, in_chans=1, num_classes=10), path, in_chans=1)
    fresh = ours(img_size=32, patch_size=4, in_chans=1, num_classes=10)
    want_pe = resample_abs_pos_embed(ref.pos_embed, new_size=[8, 8], num_prefix_tokens=2)  # prefix rows kept
    assert torch.allclose(model.pos_embed, want_pe) and torch.equal(model.pos_embed[:, :2], ref.pos_embed[:, :2])
    want_kernel = adapt_input_conv(1, resample_patch_embed(ref.patch_embed.proj.weight, [4, 4]))  # RGB summed
    assert torch.allclose(model.patch_embed.proj.weight, want_kernel)
    assert torch.equal(model.blocks[5].attn.qkv.weight, ref.blocks[5].attn.qkv.weight)
    assert torch.equal(model.head.weight, fresh.head.weight) and model.head.weight.shape == (10, 192)  # new heads
    assert torch.equal(model.head_dist.weight, fresh.head_dist.weight)
    # timm's own API gives the same model through the family's checkpoint filter
    api = timm.create_model("distill_vit_deit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                            img_size=32, patch_size=4, in_chans=1, num_classes=10, distilled=True)
    assert "state_dict" not in api.pretrained_cfg and api.pretrained_cfg["input_size"] == (1, 32, 32)
    assert all(torch.equal(a, b) for k, a in model.state_dict().items() for b in [api.state_dict()[k]]
               if not k.startswith("head"))


def test_deit_checkpoint_at_384_matches_timms_deit_at_384(deit):
    """DeiT's 384 px fine-tuning start: the same resampled grid (24x24) and logits as timm's own model."""
    _, path = deit
    ref = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=True, img_size=384,
                            pretrained_cfg_overlay=dict(file=str(path))).eval()
    model = load_start(ours(img_size=384), path, in_chans=3)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert model.pos_embed.shape == (1, 2 + 576, 192) and torch.equal(model.pos_embed, ref.pos_embed)
        assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_run_and_export_folders_start_a_student(tmp_path):
    torch.manual_seed(2)
    run = timm.create_model("distill_vit_tiny", num_classes=10, in_chans=1, distilled=True)
    (tmp_path / "run").mkdir(), (tmp_path / "export").mkdir()
    save_file(run.state_dict(), tmp_path / "run" / "student.safetensors")
    save_file(run.state_dict(), tmp_path / "export" / "model.safetensors")
    for folder in ("run", "export"):
        model = load_start(timm.create_model("distill_vit_tiny", num_classes=10, in_chans=1, distilled=True),
                           tmp_path / folder, in_chans=1)
        assert all(torch.equal(v, run.state_dict()[k]) for k, v in model.state_dict().items())
    five = load_start(timm.create_model("distill_vit_tiny", num_classes=5, in_chans=1), tmp_path / "run", in_chans=1)
    assert five.head.weight.shape == (5, 256) and torch.equal(five.blocks[0].mlp.fc1.weight, run.blocks[0].mlp.fc1.weight)


def test_a_timm_vit_student_starts_through_timms_own_filter(tmp_path):
    """Any timm student: its family's checkpoint filter (here timm's ViT's) resamples, timm's loader adapts."""
    torch.manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224")
    save_file(src.state_dict(), tmp_path / "vit.safetensors")
    model = load_start(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, in_chans=1, num_classes=10),
                       tmp_path / "vit.safetensors", in_chans=1)
    assert torch.allclose(model.pos_embed, resample_abs_pos_embed(src.pos_embed, [8, 8], num_prefix_tokens=1))
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert model.head.weight.shape == (10, 192)


@pytest.mark.parametrize("what, message", [
    ("missing", "student.checkpoint=MISSING not found"),
    ("empty folder", "the folder holds neither student.safetensors"),
    ("resnet", "does not fit student.model=distill_vit_tiny: missing cls_token, pos_embed, patch_embed.proj.weight"),
    ("wider", "does not fit student.model=distill_vit_tiny: size mismatch for"),
])
def test_weights_that_cannot_start_the_student_are_one_line(tmp_path, what, message):
    path = {"missing": tmp_path / "MISSING", "empty folder": tmp_path}.get(what, tmp_path / f"{what}.pth")
    if what in ("resnet", "wider"):
        other = timm.create_model("resnet10t", num_classes=10, in_chans=1) if what == "resnet" else \
            timm.create_model("distill_vit_tiny", embed_dim=128, num_heads=2, num_classes=10, in_chans=1)
        torch.save(other.state_dict(), path)
    with pytest.raises(ConfigError) as e:
        load_start(timm.create_model("distill_vit_tiny", num_classes=10, in_chans=1), path, in_chans=1)
    assert message.replace("MISSING", str(path)) in str(e.value) and "\n" not in str(e.value)


def test_dynamic_img_size_resamples_the_position_embedding():
    """As timm's VisionTransformer(dynamic_img_size=True): any multiple of the patch, the grid resampled."""
    torch.manual_seed(0)
    dyn = timm.create_model("distill_vit_tiny", dynamic_img_size=True, distilled=True).eval()
    fixed = timm.create_model("distill_vit_tiny", distilled=True).eval()
    fixed.load_state_dict(dyn.state_dict())
    at48 = timm.create_model("distill_vit_tiny", img_size=48, distilled=True).eval()  # 6x6 grid, built for it
    at48.load_state_dict({**dyn.state_dict(), "pos_embed": resample_abs_pos_embed(dyn.pos_embed, [6, 6], [4, 4], 2)})
    x32, x48 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(dyn(x32), fixed(x32))  # at its own size: the embedding untouched
        assert torch.allclose(dyn(x48), at48(x48), atol=1e-6)
        assert dyn(torch.randn(1, 3, 32, 56)).shape == (1, 10)  # not square: a 4x7 grid
        _, inter = dyn.forward_intermediates(torch.randn(1, 3, 40, 24), indices=1)
        assert inter[0].shape == (1, 256, 5, 3)
    with pytest.raises(AssertionError, match="not a multiple of patch_size=8"):
        dyn(torch.randn(1, 3, 36, 32))
    assert dyn.pretrained_cfg["fixed_input_size"] is False and fixed.pretrained_cfg["fixed_input_size"] is True


def test_timms_model_test_sizes_on_the_deit_sizes():
    """timm's tests/test_models.py feeds a model its cfg's input_size unless it is larger than the test's
    target (96-128 px), then a smaller one, unless the cfg says `fixed_input_size` (as timm's vit_*/deit_*
    do). Before: no such flag, and 224 px DeiT sizes were fed 96-128 px and refused (21 failures). Now the
    registry says fixed (the default build takes 224 only), and a dynamic build takes timm's smaller sizes:
    forward, backward, TorchScript, fx and forward_intermediates at those sizes."""
    for name in timm.list_models("distill_vit_*"):
        assert timm.models.get_pretrained_cfg_value(name, "fixed_input_size") is True, name
    torch.manual_seed(0)
    model = timm.create_model("distill_vit_deit_tiny", dynamic_img_size=True, num_classes=42)
    out = model.train()(torch.randn(2, 3, 128, 128))  # test_model_backward's size
    out.mean().backward()
    assert out.shape == (2, 42) and all(p.grad is not None for p in model.parameters())
    model.eval()
    x = torch.randn(1, 3, 96, 96)  # the features tests' size
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x)) and inter[0].shape == (1, 192, 6, 6)
        x = torch.randn(1, 3, 128, 128)
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))


@needs_fmnist
@pytest.mark.slow
def test_deit_tiny_finetune_recipe_trains_from_a_deit_checkpoint(deit, tmp_path):
    """The recipe with a DeiT-Ti file (random weights here) fine-tuning at 32 px for a few steps."""
    _, path = deit
    res = run_main("train", "recipes/fashion_mnist/deit_tiny_finetune.yaml", f"output_dir={tmp_path}",
                   f"student.checkpoint={path}", "data.train_subset=128", "data.test_subset=64", "data.batch_size=32",
                   "train.epochs=1", "train.warmup_epochs=0", "teacher.checkpoint=null", "teacher.model=resnet10t")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "fashion_mnist_deit_tiny_finetune"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"] == sum(p.numel() for p in ours(img_size=32, patch_size=4, in_chans=1,
                                                            num_classes=10).parameters())
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"top1_cls", "top1_dist"} <= set(last) and last["loss_distill"] > 0
