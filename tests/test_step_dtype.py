"""The step hands the loss fp32 student outputs on both paths.

Eager, Accelerate's prepared model casts its outputs to fp32; graphed, the bare model under autocast
returns bf16, and before the fix the loss (its log_softmax) ran on those. The teacher's output is
returned in its own dtype, since the logit cache stores it and a replay must be exact.
"""
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.nn import functional as F

from distill.train.step import TrainStep, accelerate_hooks, graph_hooks

B, C, H, W, K = 4, 3, 2, 2, 5  # batch, channels, height, width, classes


class Student(nn.Module):
    """Linear over the flattened image: (B, K) logits, or two heads' (B, K) logits as a tuple."""

    def __init__(self, heads: int = 1):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(C * H * W, K) for _ in range(heads))

    def forward(self, x):
        out = tuple(head(x.flatten(1)) for head in self.heads)
        return out if len(out) > 1 else out[0]


class Spy(nn.Module):
    """A criterion that records the dtype of every tensor it is given; cross-entropy on each head."""

    def __init__(self):
        super().__init__()
        self.student_dtypes, self.teacher_dtypes = [], []

    def forward(self, outputs, targets, teacher_out=None):
        heads = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        self.student_dtypes += [o.dtype for o in heads]
        self.teacher_dtypes.append(teacher_out.dtype)
        return {"loss": sum(F.cross_entropy(o, targets) for o in heads)}


class Augment:
    def apply(self, images, labels, index, salt, mix):
        return images.float(), labels


@pytest.fixture
def fresh_accelerate():
    """Accelerate's state is a process-wide singleton: start and leave it clean for other tests."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _step_once(make_hooks, heads: int, prepare=None):
    torch.manual_seed(0)
    model, teacher, spy = Student(heads), nn.Linear(C * H * W, K), Spy()
    teacher = nn.Sequential(nn.Flatten(), teacher).requires_grad_(False).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if prepare is not None:
        model, opt = prepare(model, opt)
    step = TrainStep(model, Augment(), spy, teacher, opt, make_hooks(model))
    images, labels = torch.randn(B, C, H, W), torch.randint(0, K, (B,))
    terms, teacher_out = step(images, labels, torch.arange(B), 0, None)
    assert torch.isfinite(terms["loss"]), "the spy's loss should be finite on random logits"
    return spy, teacher_out


@pytest.mark.parametrize("heads", [1, 2])
def test_graph_path_loss_sees_fp32(heads):
    spy, teacher_out = _step_once(lambda m: graph_hooks(m, None, torch.bfloat16, device_type="cpu"), heads)
    assert spy.student_dtypes == [torch.float32] * heads, f"the loss saw {spy.student_dtypes}"
    # the teacher ran under bf16 autocast; its logits go back uncast, for the cache to replay exactly
    assert teacher_out.dtype == torch.bfloat16 and spy.teacher_dtypes == [torch.bfloat16]


@pytest.mark.parametrize("heads", [1, 2])
def test_eager_path_loss_sees_fp32(heads, fresh_accelerate):
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    spy, teacher_out = _step_once(lambda m: accelerate_hooks(acc, m, None), heads, prepare=acc.prepare)
    assert spy.student_dtypes == [torch.float32] * heads, f"the loss saw {spy.student_dtypes}"
    assert teacher_out.dtype == torch.bfloat16 and spy.teacher_dtypes == [torch.bfloat16]
