"""Model size and cost: parameters and forward FLOPs, as reported by PyTorch's own counter."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_gflops(model: torch.nn.Module, input_size) -> float:
    """Forward GFLOPs for one image of `input_size` (C, H, W).

    `torch.utils.flop_counter` counts a multiply-add as 2 FLOPs, over matmuls, convolutions and
    `scaled_dot_product_attention`; element-wise ops (norms, GELU, softmax) are not counted.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9
