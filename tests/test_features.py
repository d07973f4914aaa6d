"""Feature distillation: the student's projection and the teacher's features through timm's
`forward_intermediates`; the projection trains, checkpoints and resumes with the student."""
import pytest
import torch

from conftest import ROOT
from distill.config import ConfigError
from distill.recipe import load_config
from distill.methods.feature import FeatureStudent, TeacherFeatures
from distill.models import create_model
from teachers.teacher import Teacher


def tiny_student():
    torch.manual_seed(0)
    return create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)


def test_feature_student_returns_logits_and_the_projected_pooled_block_output():
    student = tiny_student().train()
    wrapped = FeatureStudent(student, layer=1, teacher_dim=48, in_chans=1, img_size=32)
    assert student.training, "the width probe leaves the student's mode as it was"
    x = torch.randn(3, 1, 32, 32)
    logits, projected = wrapped.eval()(x)
    assert logits.shape == (3, 10) and projected.shape == (3, 48)
    # by hand: block 1's patch tokens, averaged over the 16 patches, through the linear projection
    with torch.no_grad():
        tokens = student._pos_embed(student.patch_embed(x))
        tokens = student.blocks[1](student.blocks[0](tokens))[:, student.num_prefix_tokens:]  # (3, 16, 256)
        expected = wrapped.projection(tokens.mean(dim=1))
        assert torch.allclose(projected, expected, atol=1e-5)
        assert torch.allclose(logits, student(x), atol=1e-5)
    assert {"student.cls_token", "student.pos_embed"} <= wrapped.no_weight_decay()


def test_teacher_features_are_the_pooled_timm_intermediate():
    model = create_model("resnet10t", num_classes=10, in_chans=1)
    teacher = Teacher(model, [0.5], [0.25])
    features = TeacherFeatures(teacher, layer=-1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        fmap = model.forward_features(x)  # the last stage, (2, 512, 1, 1)
    assert features.width(1, 32) == fmap.shape[1] == 512
    assert torch.allclose(features(x), fmap.mean(dim=(2, 3)), atol=1e-5)
    assert features(x).requires_grad is False


@pytest.mark.parametrize("override, message", [
    ("distill.cache=true", "output live"), ("student.distilled=true", "class head alone")])
def test_feature_refuses_what_it_cannot_do(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "recipes/fashion_mnist/feature_tiny.yaml"), [override])
