"""The training step captured as one CUDA graph (`train.cuda_graphs=true`).

A Tiny student at 16 tokens does about 1.5 ms of GPU work per step but issues ~600 kernels;
eagerly, launching them costs ~13 ms of host time on an H100 machine, so the GPU idles. Capturing
`distill.train.step.TrainStep` (augmentation, student and teacher forward, loss, backward, clipping and
the AdamW update) once, then replaying it, removes that cost (measured: 13.0 -> 3.6 ms per step
at batch 128).

What varies per step enters through static buffers, refilled before each replay: the uint8
batch, labels, sample indices, the augmentation salt of the epoch, the Mixup/CutMix parameters
and, when replaying a logit cache, the teacher's logits. A step with cached logits and one
without are different programs, so each gets its own graph. The optimizer runs with
`capturable=True` and tensor learning rates, which the scheduler updates in place between
replays. Capture needs a few warm-up steps; the model, buffers, optimizer state and random number
generators are restored afterwards (`restored`), so those steps leave no trace.
"""
from __future__ import annotations

import contextlib

import torch

from distill.train.step import TrainStep


@contextlib.contextmanager
def restored(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Undo what runs inside: the model's state, the optimizer's (state made inside is zeroed, as a
    fresh AdamW's) and torch's random number generators, CPU and CUDA. Capture warms a step up three
    times; without the generators put back, its first replay would draw after those steps' draws (a
    drop-path mask other than an eager step's), and a resumed run would not replay the same numbers."""
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_opt = {id(p): {k: v.clone() for k, v in st.items()} for p, st in optimizer.state.items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p, st in optimizer.state.items():
                for k, v in st.items():
                    v.copy_(saved_opt[id(p)][k]) if id(p) in saved_opt else v.zero_()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


class GraphedStep:
    """Called like `TrainStep`; returns its (terms, teacher logits), tensors reused by the next replay.

    The graphs with and without cached logits share one memory pool: their temporaries may take the
    same addresses, which is safe because one stream replays them one at a time and the loop has
    consumed (summed, copied into the cache) a replay's outputs before it enqueues the next replay."""

    def __init__(self, step: TrainStep):
        self.step = step
        self.graphs = {}  # cached logits given (bool) -> (graph, static inputs, static outputs)
        self.pool = None  # the graphs' shared memory pool, made at the first capture

    def _capture(self, inputs: dict):
        static = {k: v.clone() for k, v in inputs.items()}
        model, opt = self.step.model, self.step.optimizer
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with restored(model, opt):  # the warm-up steps and the capture leave no trace
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: allocations, lazy optimizer state
                for _ in range(3):
                    self.step(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.step(**static)
        return graph, static, out

    def __call__(self, images, labels, index, salt, mix, cached_logits=None):
        key = cached_logits is not None
        if key not in self.graphs:
            # the salt's buffer is filled on the device (`torch.full`, `fill_`): no host-to-device copy,
            # which from a Python int would block the host until the GPU is idle, every step
            salt_t = torch.full((), salt, dtype=torch.long, device=images.device)
            inputs = {"images": images, "labels": labels, "index": index, "mix": mix, "salt": salt_t}
            if key:
                inputs["cached_logits"] = cached_logits
            self.graphs[key] = self._capture(inputs)
        graph, static, out = self.graphs[key]
        static["salt"].fill_(salt)
        for k, v in (("images", images), ("labels", labels), ("index", index), ("mix", mix),
                     ("cached_logits", cached_logits)):
            if v is not None:
                static[k].copy_(v, non_blocking=True)
        graph.replay()
        return out


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """AdamW in its capturable form: tensor learning rates on the parameters' device, foreach kernels.

    Idempotent: every graph over the same optimizer must read the same lr tensor that the scheduler
    updates in place (torch's schedulers `fill_` a tensor lr), so an lr that is already a tensor on the
    device is kept. A loaded optimizer's is moved there: with one process Accelerate loads the optimizer's
    state onto the CPU, and a graph would read a CPU lr once, at capture, and keep it for ever while the
    schedule moved only the CPU copy. Call it before the first capture, and again after every load."""
    for group in optimizer.param_groups:
        where = group["params"][0].device if group["params"] else torch.device(device)
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), device=where)
        for key, value in group.items():  # lr, and any other tensor hyperparameter a load brought back
            if key != "params" and torch.is_tensor(value) and value.device != where:
                group[key] = value.to(where)
        group.update(capturable=True, foreach=True, fused=None)
