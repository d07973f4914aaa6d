"""Published ViT weights into a `DistillViT`: the family's timm checkpoint filter (`pretrained_filter_fn`).

timm's and DeiT's ViT checkpoints use our parameter names, so only shapes differ: the patch grid (another
img_size or patch_size), the prefix tokens (DeiT's distillation token, kept or dropped as the student is
built) and the class count. timm's own `vision_transformer.checkpoint_filter_fn` resamples the patch
kernel and the position embedding's grid (`resample_abs_pos_embed`, prefix rows kept); it assumes the
checkpoint has the model's prefix tokens, so the tokens are matched here first, and the heads last.
"""
from typing import Dict

import torch
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn
from torch import nn

HEADS = ("head.", "head_dist.")


def match_prefix_tokens(state: Dict[str, torch.Tensor], distilled: bool) -> Dict[str, torch.Tensor]:
    """The checkpoint's prefix tokens made the model's (cls [+ dist]; position rows in that order).

    A distillation token the model lacks is dropped with its position row and head. One the model has
    and the checkpoint lacks starts as a copy of the class token, its position row and head: both
    tokens then leave every block equal, so the new head starts where the trained class head is
    (a random token would start it, and the attention the other tokens pay it, from noise).
    """
    state, pe = dict(state), state.get("pos_embed")  # pe: (1, prefix + N, D)
    if "dist_token" in state and not distilled:
        state = {k: v for k, v in state.items() if k != "dist_token" and not k.startswith("head_dist.")}
        if pe is not None:
            state["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
    elif distilled and "dist_token" not in state and "cls_token" in state:
        state["dist_token"] = state["cls_token"].clone()
        if pe is not None:
            state["pos_embed"] = torch.cat([pe[:, :1], pe[:, :1], pe[:, 1:]], dim=1)
        for suffix in ("weight", "bias"):
            if f"head.{suffix}" in state:
                state[f"head_dist.{suffix}"] = state[f"head.{suffix}"].clone()
    return state


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A timm/DeiT ViT (or DistillViT) state dict as `model` takes it: prefix tokens matched, the patch
    kernel and position grid resampled by timm's ViT filter, heads of another class count (or of a
    headless model) left to the model's own, new ones."""
    state = state_dict.get("model", state_dict)  # DeiT's release files hold the tensors under "model"
    state = state.get("state_dict", state)
    state = vit_checkpoint_filter_fn(match_prefix_tokens(state, model.distilled), model)
    own = model.state_dict()
    for key in [k for k in state if k.startswith(HEADS)]:
        if key not in own:
            del state[key]  # num_classes=0: no head to load
        elif state[key].shape != own[key].shape:
            state[key] = own[key]  # another class count: the model's new head, as timm's loader leaves it
    return state
