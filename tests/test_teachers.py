"""Teachers: frozen, loaded from every checkpoint form, adapting the student's batch exactly."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import distill.models.create as create_module
from distill.config import TeacherConfig
from teachers import Teacher, TeacherError, load_teacher
from distill.models import RUN_WEIGHTS, adapt_small_input_stem, create_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # the data's normalisation
ARCH = "resnet10t"


def make(num_classes=10, in_chans=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(ARCH, num_classes, in_chans, **kwargs).eval()


def batch(chans=3, size=32, seed=1):
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(seed))


def capture_input(teacher: Teacher) -> list:
    """What the inner timm model receives, recorded by a forward pre-hook."""
    seen = []
    teacher.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return seen


def test_frozen_and_eval_even_after_train():
    t = load_teacher(TeacherConfig(model=ARCH), 10, 3, MEAN, STD)
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    assert not any(p.requires_grad for p in t.parameters())
    out = t(batch().requires_grad_(True))
    assert out.shape == (2, 10) and not out.requires_grad


def test_small_input_stem_resnet():
    torch.manual_seed(0)
    plain, small = create_model("resnet18", 10, 3), create_model("resnet18", 10, 3, small_input_stem=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.padding == (1, 1)
    assert small.conv1.bias is None and small.conv1.out_channels == plain.conv1.out_channels
    assert isinstance(small.maxpool, nn.Identity)
    x = batch()
    assert plain.forward_features(x).shape[-2:] == (1, 1)  # 32 / 32
    assert small.forward_features(x).shape[-2:] == (4, 4)  # 32 / 8: the stem no longer downsamples


def test_small_input_stem_deep_stem_keeps_3x3_weights():
    model = make()
    old = model.conv1[0].weight.clone()
    adapt_small_input_stem(model)
    assert model.conv1[0].stride == (1, 1) and torch.equal(model.conv1[0].weight, old)


def test_small_input_stem_rejects_vit():
    vit = create_model("vit_tiny_patch16_224", 10, 3, depth=1, img_size=32)
    with pytest.raises(TeacherError, match="conv stem"):
        adapt_small_input_stem(vit)


def _save(model, tmp_path, form):
    state = model.state_dict()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif form == "pth_raw":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    elif form == "pth_deit":  # DDP prefixes, wrapped under 'model', with the run's args
        path = tmp_path / "w.pth"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3,
                    "args": argparse.Namespace(lr=1e-3)}, path)
    elif form == "pth_ema":  # timm: the EMA weights win over the raw ones
        path = tmp_path / "w.pt"
        torch.save({"state_dict": make(seed=5).state_dict(), "state_dict_ema": state}, path)
    else:  # a run folder of this framework
        path = tmp_path / "run"
        path.mkdir()
        save_file(state, str(path / RUN_WEIGHTS))
    return path


@pytest.mark.parametrize("form", ["safetensors", "pth_raw", "pth_deit", "pth_ema", "run_folder"])
def test_round_trip_gives_identical_logits(tmp_path, form):
    ref = make(seed=0)
    path = _save(ref, tmp_path, form)
    t = load_teacher(TeacherConfig(model=ARCH, checkpoint=str(path)), 10, 3, MEAN, STD)
    x = batch()
    with torch.no_grad():
        expected = ref(x)
    assert torch.equal(t(x), expected)
    assert not torch.allclose(make(seed=5)(x), expected)  # the check could fail: weights matter


def test_wrong_class_count(tmp_path):
    path = _save(make(num_classes=100), tmp_path, "safetensors")
    with pytest.raises(TeacherError, match=r"has 100 classes but the teacher is built with 10"):
        load_teacher(TeacherConfig(model=ARCH, checkpoint=str(path)), 10, 3, MEAN, STD)


def test_wrong_channel_count(tmp_path):
    path = _save(make(in_chans=3), tmp_path, "safetensors")
    with pytest.raises(TeacherError, match=r"in_chans=3 but the teacher is built with in_chans=1"):
        load_teacher(TeacherConfig(model=ARCH, checkpoint=str(path)), 10, 1, [0.5], [0.25])


def test_wrong_architecture_and_stem(tmp_path):
    path = _save(make(), tmp_path, "safetensors")
    with pytest.raises(TeacherError, match="does not fit teacher.model=resnet18.*missing"):
        load_teacher(TeacherConfig(model="resnet18", checkpoint=str(path)), 10, 3, MEAN, STD)
    torch.save(create_model("resnet18", 10, 3, small_input_stem=True).state_dict(), tmp_path / "s.pth")
    with pytest.raises(TeacherError, match="small_input_stem"):
        load_teacher(TeacherConfig(model="resnet18", checkpoint=str(tmp_path / "s.pth")), 10, 3, MEAN, STD)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TeacherError, match=r"nowhere\.safetensors not found.*train a teacher"):
        load_teacher(TeacherConfig(model=ARCH, checkpoint=str(tmp_path / "nowhere.safetensors")), 10, 3, MEAN, STD)
    with pytest.raises(TeacherError, match=f"no {RUN_WEIGHTS}"):
        load_teacher(TeacherConfig(model=ARCH, checkpoint=str(tmp_path)), 10, 3, MEAN, STD)
    for name in ("bad.safetensors", "bad.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint at all")
        with pytest.raises(TeacherError, match="cannot read"):
            load_teacher(TeacherConfig(model=ARCH, checkpoint=str(tmp_path / name)), 10, 3, MEAN, STD)


def test_unknown_model_and_unset_model():
    with pytest.raises(TeacherError, match=r"teacher\.model=resnet1000x: unknown model.*timm\.list_models\('\*resnet\*'\)"):
        create_model("resnet1000x", 10, 3)
    with pytest.raises(TeacherError, match="teacher.model is not set"):
        load_teacher(TeacherConfig(), 10, 3, MEAN, STD)


def test_pretrained_fetch_failure_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to huggingface.co\nmore lines")

    monkeypatch.setattr(create_module.timm, "create_model", offline)
    with pytest.raises(TeacherError, match="cannot fetch pretrained weights for resnet10t") as e:
        create_model(ARCH, 10, 3, pretrained=True)
    assert "\n" not in str(e.value)


def test_renormalisation_is_exact_and_skipped_when_equal():
    mean_t, std_t = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    t = Teacher(make(), MEAN, STD, mean=mean_t, std=std_t)
    seen = capture_input(t)
    x = batch()
    t(x)
    m, s = torch.tensor(mean_t).view(1, 3, 1, 1), torch.tensor(std_t).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (x * 0.25 + 0.5 - m) / s)
    same = Teacher(make(), MEAN, STD, mean=MEAN, std=STD)
    seen = capture_input(same)
    same(x)
    assert seen[0] is x  # no adaptation at all


def test_resize_to_teacher_img_size():
    t = Teacher(make(), MEAN, STD, img_size=64)
    seen = capture_input(t)
    x = batch()
    t(x)
    assert seen[0].shape == (2, 3, 64, 64)
    torch.testing.assert_close(seen[0], F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
    shrink = Teacher(make(), MEAN, STD, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4], img_size=16)
    seen = capture_input(shrink)
    shrink(x)
    m, s = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    expected = F.interpolate((x * 0.25 + 0.5 - m) / s, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen[0], expected)


def test_gray_batch_repeated_for_rgb_teacher():
    x = batch(chans=1)
    plain = Teacher(make(in_chans=3), [0.5], [0.25])
    seen = capture_input(plain)
    plain(x)
    assert seen[0].shape == (2, 3, 32, 32) and torch.equal(seen[0], x.expand(-1, 3, -1, -1))
    mean_t, std_t = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rgb = Teacher(make(in_chans=3), [0.5], [0.25], mean=mean_t, std=std_t)
    seen = capture_input(rgb)
    rgb(x)
    raw = (x * 0.25 + 0.5).repeat(1, 3, 1, 1)  # un-normalise, then repeat the gray channel
    m, s = torch.tensor(mean_t).view(1, 3, 1, 1), torch.tensor(std_t).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (raw - m) / s)
    with pytest.raises(TeacherError, match="only gray"):
        Teacher(make(in_chans=1), MEAN, STD)


def test_pretrained_teacher_on_gray_data_is_rgb_with_hub_normalisation(monkeypatch):
    real = create_module.timm.create_model
    calls = []

    def no_download(name, pretrained=False, **kwargs):
        calls.append((pretrained, kwargs["in_chans"]))
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(create_module.timm, "create_model", no_download)
    t = load_teacher(TeacherConfig(model=ARCH, pretrained=True), 10, 1, [0.286], [0.353])
    assert calls == [(True, 3)] and t.in_chans == 3 and t.renorm
    imagenet_std = torch.tensor(t.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(t.scale, 0.353 / imagenet_std)
    assert t(batch(chans=1)).shape == (2, 10)


def test_channels_last_same_logits():
    """train.channels_last moves the teacher's 4-d weights to NHWC (as the run builds it): same logits."""
    x = batch()
    ref = Teacher(make(), MEAN, STD)
    fast = Teacher(make(), MEAN, STD).to(memory_format=torch.channels_last)
    conv = next(p for p in fast.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)
