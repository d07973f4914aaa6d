"""Model size and cost: parameters and forward FLOPs, as reported by PyTorch's own counter."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def count_params(model: torch.nn.Module) -> int:
    """All parameters, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


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
