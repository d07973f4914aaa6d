"""The student family: a plain pre-norm ViT with an optional DeiT distillation token.

One class, `DistillViT`, with timm's model surface (`forward_features`, `forward_head`,
`no_weight_decay`, `get_classifier`, `reset_classifier`, `pretrained_cfg`) and timm's parameter
names, so a non-distilled state_dict loads into timm's `VisionTransformer` of the same sizes.
Each size is a short registered entrypoint holding only its delta. Attention runs over the tokens
of each sample through `F.scaled_dot_product_attention` (fused kernels where the device has them).
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # timm's and DeiT's ViT epsilon


class PatchEmbed(nn.Module):
    """Non-overlapping patches: (B, C, H, W) -> (B, (H/p) * (W/p), D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        assert img_size % patch_size == 0, (
            f"img_size {img_size} must be divisible by patch_size {patch_size}: change one of them")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.img_size, self.img_size), (
            f"input is {tuple(x.shape[-2:])} but the model was built for img_size={self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0, (
            f"embed_dim {dim} must be divisible by num_heads {num_heads}: change one of them")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v: (B, H, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # (B, N, H * hd)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DistillViT(nn.Module):
    """ViT with a class token, learnable position embedding and, if `distilled`, a DeiT
    distillation token (second token) with its own head `head_dist`.

    A distilled model returns (class logits, distillation logits) only when switched on with
    `set_distilled_training(True)` *and* in training mode; otherwise the mean of the two heads.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 8, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 256, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, distilled: bool = False):
        super().__init__()
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.distilled, self.distilled_training = distilled, False
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))  # over cls [+ dist] + patches
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth (timm)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth)])
        self.norm = LayerNorm(embed_dim)
        self.head = self._new_head(num_classes)
        self.head_dist = self._new_head(num_classes) if distilled else None
        self._init_weights()
        self.pretrained_cfg = self.default_cfg = _cfg_as_built(self)

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        for t in (self.cls_token, self.dist_token, self.pos_embed):
            if t is not None:
                trunc_normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"} | ({"dist_token"} if self.distilled else set())

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make training-mode `forward` return (class logits, distillation logits)."""
        if enable and not self.distilled:
            raise RuntimeError("set_distilled_training(True) needs a model built with distilled=True")
        self.distilled_training = enable

    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head(s) for `num_classes` (0: identity). `global_pool` is timm's signature; the class
        token is always the pooled feature."""
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)
        if self.distilled:
            self.head_dist = self._new_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, prefix + N, D), prefix = cls [+ dist]."""
        x = self.patch_embed(x)  # (B, N, D)
        prefix = [self.cls_token, self.dist_token] if self.distilled else [self.cls_token]
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)  # (B, prefix + N, D)
        x = self.blocks(x + self.pos_embed)
        return self.norm(x)

    def forward_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class logits, distillation logits) of a distilled model, whatever its mode (evaluation)."""
        if not self.distilled:
            raise RuntimeError("forward_heads needs a model built with distilled=True; call the model instead")
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens (B, T, D) -> logits (B, classes), or the pooled (B, D) feature if `pre_logits`."""
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2 if self.distilled else x[:, 0]
        if not self.distilled:
            return self.head(x[:, 0])
        cls, dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.distilled_training and self.training:
            return cls, dist  # the loss supervises each head with its own target
        return (cls + dist) / 2  # inference: average the two heads (DeiT)

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"url": "", "input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "num_classes": 10,
            "first_conv": "patch_embed.proj", "classifier": "head", **kwargs}


def _cfg_as_built(model: DistillViT) -> dict:
    """The cfg of this instance: its input size, channels and classes, not the registry's defaults."""
    c, s = model.patch_embed.proj.in_channels, model.patch_embed.img_size
    return _cfg(input_size=(c, s, s), mean=(0.5,) * c, std=(0.5,) * c, num_classes=model.num_classes,
                classifier=("head", "head_dist") if model.distilled else "head")


default_cfgs = generate_default_cfgs({f"distill_vit_{size}": _cfg() for size in ("tiny", "small", "medium", "base")})


def _create(variant: str, pretrained: bool = False, **kwargs) -> DistillViT:
    model = build_model_with_cfg(DistillViT, variant, pretrained, **kwargs)
    # timm attaches the registry cfg (3x32x32, 10 classes): keep its tags, describe the model as built
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **_cfg_as_built(model)}
    return model


@register_model
def distill_vit_tiny(pretrained: bool = False, **kwargs) -> DistillViT:
    """The seed student: depth 4, dim 256, 4 heads, patch 8 at 32x32 (3.2M parameters)."""
    model_args = dict(embed_dim=256, depth=4, num_heads=4)
    return _create("distill_vit_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def distill_vit_small(pretrained: bool = False, **kwargs) -> DistillViT:
    model_args = dict(embed_dim=384, depth=6, num_heads=6)
    return _create("distill_vit_small", pretrained, **dict(model_args, **kwargs))


@register_model
def distill_vit_medium(pretrained: bool = False, **kwargs) -> DistillViT:
    model_args = dict(embed_dim=576, depth=9, num_heads=9)
    return _create("distill_vit_medium", pretrained, **dict(model_args, **kwargs))


@register_model
def distill_vit_base(pretrained: bool = False, **kwargs) -> DistillViT:
    """ViT-Base widths: depth 12, dim 768, 12 heads."""
    model_args = dict(embed_dim=768, depth=12, num_heads=12)
    return _create("distill_vit_base", pretrained, **dict(model_args, **kwargs))
