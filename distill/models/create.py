"""Models by name, for any role: `timm.create_model` with one-line errors, the project's students
registered, hub weights only where the hub answers, and small-input stems for CNNs on 32 px images."""
from __future__ import annotations

import difflib
import itertools
from contextlib import contextmanager
from typing import Optional

import timm
from torch import nn

import students  # noqa: F401  (registers distill_vit_* with timm)
from distill.errors import ConfigError, TeacherError, first_line


def first_conv(model: nn.Module) -> Optional[tuple]:
    """(name, module) of the input conv: `pretrained_cfg['first_conv']`, else the first Conv2d."""
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    modules = dict(model.named_modules())
    if isinstance(modules.get(name), nn.Conv2d):
        return name, modules[name]
    return next(((n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)), None)


def model_name(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__


def adapt_small_input_stem(model: nn.Module) -> nn.Module:
    """CIFAR-style stem: the first conv becomes 3x3 stride 1, the stem max-pool an identity.

    At 32px an ImageNet stem (7x7 stride 2 + max-pool) leaves an 8x8 map for the first stage;
    this keeps the full resolution. Raises TeacherError for models without a conv stem (ViTs).
    """
    found = first_conv(model)
    if found is None or hasattr(model, "patch_embed"):
        raise TeacherError(f"small_input_stem=true needs a CNN with a conv stem; {model_name(model)} has "
                           "none (a ViT patch embedding?): set small_input_stem=false")
    name, old = found
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1,
                    bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    if new.weight.shape == old.weight.shape:  # already 3x3 (deep stems): keep its weights
        new.load_state_dict(old.state_dict())
    model.set_submodule(name, new)

    if isinstance(getattr(model, "maxpool", None), nn.Module):  # timm ResNets (pool or conv-pool)
        model.maxpool = nn.Identity()
        return model
    parent = name.rpartition(".")[0]
    for pool_name, m in model.named_modules():  # first max-pool beside the first conv, or in a stem
        if isinstance(m, nn.MaxPool2d) and (pool_name.rpartition(".")[0] == parent or pool_name.startswith("stem")):
            model.set_submodule(pool_name, nn.Identity())
            break
    return model


def _unknown_model(name: str, key: str) -> Exception:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    stem = "".join(itertools.takewhile(str.isalpha, name.lower())) or name  # "resnet50d" -> "resnet"
    error = TeacherError if key.startswith("teacher") else ConfigError  # the role's own kind of UserError
    return error(f"{key}={name}: unknown model; {hint}list names with timm.list_models('*{stem}*')")


def _hub_unreachable() -> Optional[str]:
    """Why the Hugging Face hub cannot be reached, or None when it answers one request (5 s at most).

    Asked once before a download: without it, a machine with no network spends ~50 s on
    huggingface_hub's retries (5 per file, 23 lines of log) before the same answer."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as e:  # noqa: BLE001 (DNS, refused, timeout, proxy, TLS: all mean "unreachable")
        return first_line(e)
    return None


@contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub without requests for the duration (cached files load; the rest fail at once).
    It reads the flag at each request (`constants.is_offline_mode`), so setting it here takes effect."""
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_model(name: str, num_classes: int, in_chans: int, pretrained: bool = False,
                 small_input_stem: bool = False, fix: str = "set pretrained=false and give a checkpoint instead",
                 key: str = "teacher.model", **kwargs) -> nn.Module:
    """`timm.create_model` with one-line errors; `small_input_stem` applies `adapt_small_input_stem`.
    `fix` ends the error for hub weights that cannot be fetched; `key` names the model in an unknown name's."""
    if ":" not in name and not timm.is_model(name):  # "hf-hub:..." names are resolved by timm
        raise _unknown_model(name, key)
    unreachable = _hub_unreachable() if pretrained else None
    try:
        with _hub_offline(unreachable is not None):  # weights in the local cache still load
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                      in_chans=in_chans, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        why = f"not cached, and the hub is unreachable: {unreachable[:120]}" if unreachable else first_line(e)[:160]
        raise TeacherError(f"cannot fetch pretrained weights for {name} ({why}); {fix}") from None
    return adapt_small_input_stem(model) if small_input_stem else model


def create_model_at(name: str, img_size: Optional[int], **kwargs) -> nn.Module:
    """`create_model` built for `img_size` where the model takes one (ViTs are built for the resolution
    they will see); CNNs take no img_size and run at any resolution. None: the model's default."""
    if img_size is None:
        return create_model(name, **kwargs)
    try:
        return create_model(name, img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return create_model(name, **kwargs)
