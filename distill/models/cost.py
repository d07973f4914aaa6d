"""Model size and cost: parameters, forward and training FLOPs, as reported by PyTorch's own counter."""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def count_params(model: torch.nn.Module) -> int:
    """All parameters, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def storage_free(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The model that `build()` makes, with CPU tensors that have shapes and no storage, to count.

    Built on the meta device, then given fake CPU tensors (`FakeTensorMode`), so that the counter sees
    the kernels a CPU run dispatches to. On the meta device alone, attention falls back to its math
    path, whose backward counts 3 matmuls' worth where the fused kernels count 2.5 (they recompute the
    scores): not the run's count. Building a 448M-parameter student for real to count it took ~5 GB,
    which a study's process then kept through all its runs.
    """
    with torch.device("meta"):
        model = build()
    with FakeTensorMode(allow_non_fake_inputs=True):
        return model.to_empty(device="cpu")


def _sdpa_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)  # 2 x MACs of q k^T and attn v


# FlopCounterMode knows the CUDA attention kernels but not the CPU one, which it would count as 0.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop}


@torch.no_grad()
def forward_gflops(model: torch.nn.Module, input_size: Optional[Sequence[int]] = None) -> float:
    """Forward GFLOPs per image, for an input of `input_size` (C, H, W) or (B, C, H, W).

    None takes `model.pretrained_cfg['input_size']`. Counted by `torch.utils.flop_counter` in
    eval mode, with a multiply-add as 2 FLOPs (GFLOPs = 2 x GMACs), over matmuls, convolutions and
    `scaled_dot_product_attention`; element-wise ops (norms, GELU, softmax) are not counted.
    """
    input_size = tuple(input_size or model.pretrained_cfg["input_size"])
    assert len(input_size) in (3, 4), f"input_size {input_size}: give (C, H, W) or (B, C, H, W)"
    shape = input_size if len(input_size) == 4 else (1, *input_size)  # (B, C, H, W)
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            model(torch.zeros(shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / shape[0] / 1e9


# The backward of CPU attention, which the counter would also count as 0.
_CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
    lambda grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs:
    sdpa_backward_flop_count(grad_out_shape, q_shape, k_shape, v_shape))


def _tensors(out) -> list:
    """The tensors of a forward's output: a tensor, (class, dist) logits, or a method's `Taps` (with a list)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in (out if isinstance(out, (tuple, list)) else ()) for t in _tensors(o)]


def train_gflops(model: torch.nn.Module, input_size: Sequence[int], batch: int = 2) -> float:
    """Training GFLOPs per image: one forward in training mode and its backward, counted by
    `torch.utils.flop_counter` (multiply-add = 2 FLOPs; matmuls, convolutions, attention), per image.

    Counted on a copy of `model` under a forked RNG, so the run's weights, gradients, BatchNorm
    statistics and random streams are exactly as they were. The optimizer's update is element-wise
    and not counted, as in Kaplan's C = 6 N D (forward 2 N D, backward 4 N D per token).
    """
    p = next(model.parameters())
    # a model without storage (`storage_free`) has nothing to keep, and deepcopy reads its data pointers
    clone = (model if isinstance(p, FakeTensor) else copy.deepcopy(model)).train()
    x = torch.zeros((batch, *input_size), device=p.device, dtype=p.dtype)
    with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []):
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            out = clone(x)
            sum(o.float().sum() for o in _tensors(out) if o.requires_grad).backward()
    return counter.get_total_flops() / batch / 1e9
