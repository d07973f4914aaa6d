"""The student family: a plain pre-norm ViT with an optional DeiT distillation token.

One class, `DistillViT`, with timm's model surface (`forward_features`, `forward_head`,
`forward_intermediates`, `prune_intermediate_layers`, `feature_info`, `set_grad_checkpointing`,
`group_matcher`, `no_weight_decay`, `get_classifier`, `reset_classifier`, `pretrained_cfg`,
`features_only=True`) and timm's parameter names, so a non-distilled state_dict loads into timm's
`VisionTransformer` of the same sizes. It scripts (`torch.jit.script`) and traces (`torch.fx`): the
forward-time shape checks are `_assert`, the constructor's are `ValueError`s.
Each size is a short registered entrypoint holding only its delta. Attention runs over the tokens
of each sample through `F.scaled_dot_product_attention` (fused kernels where the device has them).
"""

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, _assert, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import nn
from torch.jit import Final

from students.weights import checkpoint_filter_fn

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # timm's and DeiT's ViT epsilon
torch.fx.wrap("resample_abs_pos_embed")  # a leaf under torch.fx here too (timm wraps it in its own module only)


class PatchEmbed(nn.Module):
    """Non-overlapping patches: (B, C, H, W) -> (B, (H/p) * (W/p), D), or (B, H/p, W/p, D) when the
    model is dynamic (its position embedding is then resampled to each input's grid, as timm's)."""

    output_nhwc: Final[bool]

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, dynamic_img_size: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}: "
                             "change data.img_size or student.patch_size")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)  # timm's checkpoint filter reads it
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = not dynamic_img_size  # only img_size x img_size inputs unless dynamic: timm reads this
        self.output_nhwc = dynamic_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2], x.shape[-1]
        # One _assert per side: torch.fx records each comparison (`and` would need a concrete bool). The
        # messages name no runtime size: a traced graph would freeze it as "Proxy(getitem)".
        if self.strict_img_size:
            _assert(H == self.img_size, f"input height is not img_size={self.img_size}, the size the model was built for")
            _assert(W == self.img_size, f"input width is not img_size={self.img_size}, the size the model was built for")
        else:
            _assert(H % self.patch_size == 0, f"input height is not a multiple of patch_size={self.patch_size}")
            _assert(W % self.patch_size == 0, f"input width is not a multiple of patch_size={self.patch_size}")
        x = self.proj(x)  # (B, D, h, w)
        if self.output_nhwc:
            return x.permute(0, 2, 3, 1)  # (B, h, w, D): the grid travels to the position embedding
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}: change embed_dim "
                             "or num_heads (or pick another distill_vit_* size)")
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
    `dynamic_img_size=True` (timm's VisionTransformer's flag) takes any input whose sides are multiples
    of the patch size, the position embedding resampled (bicubic) from img_size's grid to the input's.
    """

    distilled: Final[bool]  # constants under torch.jit.script: the branch of the other kind is not compiled
    dynamic_img_size: Final[bool]
    num_prefix_tokens: Final[int]

    def __init__(self, img_size: Union[int, Sequence[int]] = 32, patch_size: int = 8, in_chans: int = 3,
                 num_classes: int = 10, embed_dim: int = 256, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 distilled: bool = False, dynamic_img_size: bool = False):
        super().__init__()
        img_size = _square_size(img_size)
        self.num_classes, self.in_chans, self.embed_dim = num_classes, in_chans, embed_dim
        self.num_features = self.head_hidden_size = embed_dim  # tokens and pooled feature: both embed_dim
        self.distilled, self.distilled_training, self.dynamic_img_size = distilled, False, dynamic_img_size
        self.num_prefix_tokens = 2 if distilled else 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, dynamic_img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))  # over cls [+ dist] + patches
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # as timm; on the CPU even under a meta device
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        """Parameter groups for layer-wise lr decay: the embedding, then one group per block."""
        return dict(stem=r"^cls_token|^dist_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (training only): less memory, ~1/3 more compute."""
        self.grad_checkpointing = enable

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make training-mode `forward` return (class logits, distillation logits)."""
        if enable and not self.distilled:
            raise RuntimeError("set_distilled_training(True) needs a model built with distilled=True")
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head(s) for `num_classes` (0: identity). `global_pool` is timm's signature; the class
        token is always the pooled feature."""
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)
        if self.distilled:
            self.head_dist = self._new_head(num_classes)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D), or (B, h, w, D) if dynamic -> cls [+ dist] + patch tokens (B, prefix + N, D)
        plus the position embedding (resampled to the (h, w) grid if dynamic, prefix rows kept)."""
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            B, h, w, D = x.shape
            grid = self.patch_embed.grid_size  # the one pos_embed was built for
            pos_embed = resample_abs_pos_embed(self.pos_embed, new_size=[h, w], old_size=[grid[0], grid[1]],
                                               num_prefix_tokens=self.num_prefix_tokens)  # (1, prefix + h * w, D)
            x = x.reshape(B, h * w, D)
        prefix = [self.cls_token, self.dist_token] if self.distilled else [self.cls_token]
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)  # (B, prefix + N, D)
        return x + pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, prefix + N, D), prefix = cls [+ dist]."""
        x = self._pos_embed(self.patch_embed(x))
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)  # same values; activations recomputed in backward
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
            output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs on the way to `forward_features`, timm's semantics.

        indices: the last n blocks if an int, these blocks if a list (negative from the end), all if None.
        norm: apply the final norm to each intermediate. stop_early: skip the blocks after the last taken.
        output_fmt: "NCHW" gives patch tokens as (B, D, h, w), "NLC" as (B, N, D); the prefix tokens
        (B, prefix, D) come along as (patches, prefix) pairs with `return_prefix_tokens`.
        Returns the intermediates, or (forward_features' output, intermediates).
        """
        _assert(output_fmt in ("NCHW", "NLC"), f"output_fmt must be 'NCHW' or 'NLC', not {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        x = self._pos_embed(self.patch_embed(x))
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]  # each (B, prefix, D)
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]  # each (B, N, D)
        if output_fmt == "NCHW":
            h, w = height // self.patch_embed.patch_size, width // self.patch_embed.patch_size
            intermediates = [y.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))  # TorchScript cannot type the pairs
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last of `indices` (and the norm, the heads); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]  # nn.Sequential slice: keeps the names blocks.0, blocks.1, ...
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def forward_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class logits, distillation logits) of a distilled model, whatever its mode (evaluation)."""
        if not self.distilled:
            raise RuntimeError("forward_heads needs a model built with distilled=True; call the model instead")
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False
                     ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Tokens (B, T, D) -> logits (B, classes), or the pooled (B, D) feature if `pre_logits`."""
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2 if self.distilled else x[:, 0]
        if not self.distilled:
            return self.head(x[:, 0])
        else:  # an else, not a fall-through: TorchScript then never compiles head_dist (None) of a plain model
            cls, dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
            if self.distilled_training and self.training:
                return cls, dist  # the loss supervises each head with its own target
            return (cls + dist) / 2  # inference: average the two heads (DeiT)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self.forward_head(self.forward_features(x))


def _square_size(img_size: Union[int, Sequence[int]]) -> int:
    """timm hands a fixed-size model's img_size back as (H, W) (config.json, traits): take the side."""
    if isinstance(img_size, int):
        return img_size
    if len(img_size) != 2 or img_size[0] != img_size[1]:
        raise ValueError(f"img_size {tuple(img_size)} must be one int or a square (H, W): change data.img_size")
    return int(img_size[0])


def _cfg(**kwargs) -> dict:
    # fixed_input_size: as timm's own vit_*/deit_* cfgs say, built as registered the model takes its
    # input_size only (timm's tests then feed it that size); `_cfg_as_built` clears it for dynamic_img_size
    return {"url": "", "input_size": (3, 32, 32), "fixed_input_size": True, "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "num_classes": 10, "first_conv": "patch_embed.proj", "classifier": "head", **kwargs}


def _cfg_as_built(model: DistillViT, base: Optional[dict] = None) -> dict:
    """`base` (the registry's cfg, or a loaded config.json's) with this instance's input size,
    channels and classes; its mean/std stay where they have one value per channel."""
    c, s = model.patch_embed.proj.in_channels, model.patch_embed.img_size
    cfg = {k: v for k, v in (base or _cfg()).items() if k != "state_dict"}  # weights passed in to load: not kept
    if len(cfg["mean"]) != c or len(cfg["std"]) != c:
        cfg.update(mean=(0.5,) * c, std=(0.5,) * c)
    cfg.update(input_size=(c, s, s), num_classes=model.num_classes, fixed_input_size=not model.dynamic_img_size,
               classifier=("head", "head_dist") if model.distilled else "head")
    return cfg


def _imagenet_cfg(**kwargs) -> dict:
    """DeiT's setting: 224 px, ImageNet mean/std, 1000 classes, bicubic, DeiT's eval crop ratio 0.875."""
    return _cfg(input_size=(3, 224, 224), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=1000,
                interpolation="bicubic", crop_pct=0.875, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"distill_vit_{size}": _cfg() for size in ("tiny", "small", "medium", "base")},
    **{f"distill_vit_deit_{size}": _imagenet_cfg() for size in ("tiny", "small", "base")},
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> DistillViT:
    """Build through timm's builder. `features_only=True` returns timm's FeatureGetterNet, which calls
    `forward_intermediates` (the last 3 blocks by default, as timm's ViT), or another wrapper by
    `feature_cls` ("fx", "hook", ...). `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)` loads a
    timm/DeiT ViT checkpoint through `checkpoint_filter_fn` (grid, tokens and heads adapted)."""
    built = []  # the DistillViT itself, also when a features_only wrapper is returned

    def build(**model_kwargs) -> DistillViT:
        built.append(DistillViT(**model_kwargs))
        return built[0]

    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(build, variant, pretrained, **kwargs, pretrained_filter_fn=checkpoint_filter_fn,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls="getter"))
    # timm attaches the registry's (or config.json's) cfg: keep its tags, describe the model as built
    vit = built[0]
    vit.pretrained_cfg = vit.default_cfg = _cfg_as_built(vit, vit.pretrained_cfg)
    if model is not vit:
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(vit.pretrained_cfg)
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


# DeiT's sizes (Touvron et al., 2021) at their native 224 px, patch 16: with `distilled=True` and 1000
# classes they have the parameter counts of timm's deit_{tiny,small,base}_distilled_patch16_224.

@register_model
def distill_vit_deit_tiny(pretrained: bool = False, **kwargs) -> DistillViT:
    """DeiT-Ti: depth 12, dim 192, 3 heads, patch 16 at 224x224 (5.7M parameters; 5.9M with the token)."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("distill_vit_deit_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def distill_vit_deit_small(pretrained: bool = False, **kwargs) -> DistillViT:
    """DeiT-S: depth 12, dim 384, 6 heads, patch 16 at 224x224."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("distill_vit_deit_small", pretrained, **dict(model_args, **kwargs))


@register_model
def distill_vit_deit_base(pretrained: bool = False, **kwargs) -> DistillViT:
    """DeiT-B: depth 12, dim 768, 12 heads, patch 16 at 224x224."""
    model_args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("distill_vit_deit_base", pretrained, **dict(model_args, **kwargs))
