"""The student family: a plain pre-norm ViT with an optional DeiT distillation token.

One class, `DistillViT`, with timm's model surface (`forward_features`, `forward_head`,
`no_weight_decay`, `get_classifier`, `reset_classifier`, `pretrained_cfg`); each size is a
short registered entrypoint holding only its delta. Attention runs over the tokens of each
sample through `F.scaled_dot_product_attention` (fused kernels where the device has them).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0, f"embed_dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v, over tokens
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DistillViT(nn.Module):
    """ViT with a class token, learnable position embedding and, if `distilled`, a DeiT
    distillation token with its own head.

    A distilled model returns (class logits, distillation logits) only when switched on with
    `set_distilled_training(True)` *and* in training mode; otherwise the mean of the two heads.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 8, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 256, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, distilled: bool = False):
        super().__init__()
        assert img_size % patch_size == 0, f"img_size {img_size} must be divisible by patch_size {patch_size}"
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.distilled, self.distilled_training = distilled, False
        self.num_prefix_tokens = 2 if distilled else 1
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()) if distilled else None
        self._init_weights()

    def _init_weights(self) -> None:
        for t in (self.cls_token, self.dist_token, self.pos_embed):
            if t is not None:
                trunc_normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"} | ({"dist_token"} if self.distilled else set())

    def set_distilled_training(self, enable: bool = True) -> None:
        assert self.distilled or not enable, "set_distilled_training needs a model built with distilled=True"
        self.distilled_training = enable

    def get_classifier(self):
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if self.distilled:
            self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), N = (img/patch)^2
        prefix = [self.cls_token, self.dist_token] if self.distilled else [self.cls_token]
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)  # (B, prefix + N, D)
        x = self.blocks(x + self.pos_embed)
        return self.norm(x)

    def forward_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class logits, distillation logits) of a distilled model, whatever its mode (evaluation)."""
        assert self.distilled, "forward_heads needs a model built with distilled=True"
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2 if self.distilled else x[:, 0]
        if not self.distilled:
            return self.head(x[:, 0])
        cls, dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2  # inference: average the two heads (DeiT)

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 10,
            "first_conv": "patch_embed", "classifier": "head", "url": "", **kwargs}


default_cfgs = generate_default_cfgs({f"distill_vit_{size}": _cfg() for size in ("tiny", "small", "medium", "base")})


def _create(variant: str, pretrained: bool = False, **kwargs) -> DistillViT:
    return build_model_with_cfg(DistillViT, variant, pretrained, **kwargs)


@register_model
def distill_vit_tiny(pretrained: bool = False, **kwargs) -> DistillViT:
    """The seed student: depth 4, dim 256, 4 heads, patch 8 at 32x32 (3.2M parameters)."""
    return _create("distill_vit_tiny", pretrained, **dict(dict(embed_dim=256, depth=4, num_heads=4), **kwargs))


@register_model
def distill_vit_small(pretrained: bool = False, **kwargs) -> DistillViT:
    return _create("distill_vit_small", pretrained, **dict(dict(embed_dim=384, depth=6, num_heads=6), **kwargs))


@register_model
def distill_vit_medium(pretrained: bool = False, **kwargs) -> DistillViT:
    return _create("distill_vit_medium", pretrained, **dict(dict(embed_dim=576, depth=9, num_heads=9), **kwargs))


@register_model
def distill_vit_base(pretrained: bool = False, **kwargs) -> DistillViT:
    """ViT-Base widths: depth 12, dim 768, 12 heads."""
    return _create("distill_vit_base", pretrained, **dict(dict(embed_dim=768, depth=12, num_heads=12), **kwargs))
