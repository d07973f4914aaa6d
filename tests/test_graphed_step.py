"""The CUDA-graph step's host side, checked on the CPU: a resumed run's learning rate reaches the graph,
the capture's warm-up leaves no trace (random numbers included), and a replay makes no host-to-device
copy. tests/test_cuda.py runs the graphs themselves where a GPU is present."""
import io

import torch

from distill.config import TrainConfig
from distill.train.build import build_scheduler
from distill.train.graphed import GraphedStep, make_capturable, restored
from syncs import counted_syncs


def _optimizer(device="cpu"):
    model = torch.nn.Linear(4, 3).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_a_loaded_capturable_optimizer_reads_its_lr_on_the_parameters_device():
    """Accelerate loads a one-process run's optimizer state onto the CPU: lr comes back as a CPU tensor.
    A graph over GPU parameters would read it once, at capture; make_capturable must move it (here to
    the meta device, standing in for a GPU)."""
    _, opt = _optimizer()
    make_capturable(opt, torch.device("cpu"))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _, resumed = _optimizer("meta")
    resumed.load_state_dict(torch.load(buffer, map_location="cpu"))
    assert resumed.param_groups[0]["lr"].device.type == "cpu"  # what a load gives back
    make_capturable(resumed, torch.device("meta"))
    assert resumed.param_groups[0]["lr"].device.type == "meta"
    assert resumed.param_groups[0]["capturable"] and resumed.param_groups[0]["foreach"]


def test_the_schedule_moves_the_very_lr_tensor_after_a_load():
    """After a load and make_capturable, each scheduler step writes into the tensor the kernels read."""
    cfg = TrainConfig(epochs=2, warmup_epochs=1, lr=1e-3, min_lr=1e-5)
    _, opt = _optimizer()
    sched = build_scheduler(opt, cfg, updates_per_epoch=4, ticks_per_update=1)
    make_capturable(opt, torch.device("cpu"))
    for _ in range(3):
        opt.step(), sched.step()
    saved = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, map_location="cpu")
    _, opt2 = _optimizer()
    sched2 = build_scheduler(opt2, cfg, updates_per_epoch=4, ticks_per_update=1)
    opt2.load_state_dict(state["opt"]), sched2.load_state_dict(state["sched"])
    make_capturable(opt2, torch.device("cpu"))
    lr = opt2.param_groups[0]["lr"]
    seen = []
    for _ in range(4):
        sched2.step()
        assert opt2.param_groups[0]["lr"] is lr  # the same tensor, written in place
        seen.append(lr.item())
        assert abs(seen[-1] - float(sched2.get_last_lr()[0])) < 1e-12
    assert len(set(seen)) == 4  # the schedule moves it every step (warm-up then cosine)
    sched.step()
    assert abs(opt.param_groups[0]["lr"].item() - seen[0]) < 1e-12  # and as the uninterrupted run does


def test_the_warm_up_leaves_weights_optimizer_and_random_numbers_as_they_were():
    """A capture's warm-up steps run inside `restored`: afterwards a step with drop-out (as drop-path)
    draws the numbers it would have drawn without them, so a resumed graphed run replays the same."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(16, 8)

    def step():
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = step()
    model.load_state_dict(before)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(123)
    with restored(model, opt):
        for _ in range(3):
            step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.count_nonzero(v) == 0 for st in opt.state.values() for v in st.values())
    assert torch.equal(step(), expected)


class _Replay:
    def replay(self):
        pass


def test_a_replay_copies_nothing_from_the_host(monkeypatch):
    """Refilling the static inputs: the salt is `fill_`ed into its buffer, never made into a device
    tensor from a Python int (a blocking host-to-device copy on every step)."""
    graphed = GraphedStep(step=None)
    inputs = {"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "labels": torch.zeros(2, dtype=torch.long),
              "index": torch.arange(2), "mix": torch.zeros(4), "salt": torch.zeros((), dtype=torch.long)}
    graphed.graphs[False] = (_Replay(), {k: v.clone() for k, v in inputs.items()}, "out")
    images = torch.ones(2, 1, 4, 4, dtype=torch.uint8)
    with counted_syncs(monkeypatch) as syncs:
        out = graphed(images, inputs["labels"], inputs["index"], 987654321, inputs["mix"])
    assert out == "out" and sum(syncs.values()) == 0, syncs
    static = graphed.graphs[False][1]
    assert int(static["salt"]) == 987654321 and torch.equal(static["images"], images)
