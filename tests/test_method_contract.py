"""The open method contract: a method may take the views' dataset index, ask for unpooled layers of
the student and the teacher (`Taps`), and own state that trains and checkpoints beside the student."""
import pytest
import torch
from torch import nn

import students  # noqa: F401  (registers distill_vit_*)
from distill.recipe import DistillConfig
from distill.methods import Method, build_criterion
from distill.methods.taps import StudentTaps, TeacherTaps, WithMethod
from distill.train.step import TrainStep, graph_hooks
from distill.models import create_model
from teachers.teacher import Teacher


def test_student_taps_are_its_unpooled_tokens_and_pre_logits():
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    taps = StudentTaps(student, layers=(1, -1), fmt="NLC")(x)
    final, maps = student.forward_intermediates(x, indices=[1, -1], output_fmt="NLC")
    assert [m.shape for m in taps.layers] == [(2, 16, 256), (2, 16, 256)]  # 32 px / patch 8: 16 tokens
    for got, want in zip(taps.layers, maps):
        assert torch.equal(got, want)
    assert torch.equal(taps.pre_logits, final[:, 0]) and torch.equal(taps.logits, student(x))


def test_teacher_taps_are_its_unpooled_maps_on_the_adapted_batch():
    model = create_model("resnet10t", num_classes=10, in_chans=1)
    teacher = Teacher(model, [0.5], [0.25], mean=[0.2], std=[0.5])  # re-normalises: the taps must see it too
    x = torch.randn(2, 1, 32, 32)
    taps = TeacherTaps(teacher, layers=(2,))(x)
    (want,) = model.forward_intermediates(teacher.adapt(x), indices=[2], intermediates_only=True)
    assert taps.layers[0].dim() == 4 and torch.equal(taps.layers[0], want)
    assert torch.equal(taps.logits, teacher(x)) and taps.pre_logits.shape == (2, 512)
    assert not taps.layers[0].requires_grad


class Recorder(Method):
    """A stub method: a bank of one counter per image, which it must be told about (needs_index)."""

    name, summary, needs_teacher, needs_index = "recorder", "-", False, True

    def setup(self, student, teacher, in_chans, img_size):
        self.register_buffer("seen", torch.zeros(self.num_samples))

    def forward(self, outputs, targets, teacher_out=None, index=None):
        self.seen.index_add_(0, index, torch.ones(len(index)))
        loss = nn.functional.cross_entropy(outputs, targets)
        return {"loss": loss, "base": loss}


class Identity:
    def apply(self, images, labels, index, salt, mix):
        return images, labels


def test_step_hands_the_dataset_index_and_state_trains_beside_the_student():
    method = Recorder(DistillConfig(), build_criterion(False, 0.0))
    student = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    trainable, teacher = method.wrap(student, None, 1, 2, num_samples=5)
    assert isinstance(trainable, WithMethod) and "method.seen" in trainable.state_dict()
    assert "seen" not in str(list(student.state_dict()))
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.1)
    step = TrainStep(trainable, Identity(), method, teacher, optimizer, graph_hooks(trainable, None, None, "cpu"))
    views = torch.tensor([7, 1, 5])  # view ids of a repeated-augmentation epoch: 7 and 5 are copies of 2 and 0
    step(torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 2]), views, 0, None)
    assert method.seen.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_method_without_state_or_index_is_left_as_it_was():
    from distill.methods import build_method

    kd = build_method(DistillConfig(type="kd"), build_criterion(False, 0.0))
    student = nn.Linear(4, 3)
    trainable, teacher = kd.wrap(student, None, 1, 2)
    assert trainable is student and not kd.needs_index and not kd.taps


@pytest.mark.parametrize("fmt", ["NCHW", "NLC"])
def test_taps_widths_from_a_probe(fmt):
    from distill.methods.taps import probe

    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)
    taps = probe(StudentTaps(student, (0,), fmt), 1, 32)
    assert taps.layers[0].shape == ((1, 256, 4, 4) if fmt == "NCHW" else (1, 16, 256))
    assert student.training  # the probe put the mode back
