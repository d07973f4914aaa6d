"""A student's start weights, `student.checkpoint=PATH`: a timm or DeiT checkpoint file (.pth with or
without a "model" key, .safetensors), a run folder of this framework (its student.safetensors) or an
exported folder (`distill export`: model.safetensors).

The weights go through timm's own loading: the model family's checkpoint filter (for the ViTs: the patch
kernel and the position embedding resampled to the student's grid, prefix tokens kept; for DistillViT
also the distillation token kept or dropped as `student.distilled` asks), then
`timm.models.load_pretrained` (the input conv summed or repeated to the data's channels, the classifier
left new where the class count differs). What still does not fit is one line naming the tensors.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from timm.models import load_pretrained
from torch import nn

from distill.errors import ConfigError, first_line
from distill.models import RUN_WEIGHTS, read_state_dict

EXPORT_WEIGHTS = "model.safetensors"  # what `distill export` (timm's save_for_hf) writes


def start_weights_file(path) -> Path:
    """The weights file `student.checkpoint` names: the file itself, or the one in a run or export folder."""
    p = Path(path)
    if p.is_dir():
        found = [p / name for name in (RUN_WEIGHTS, EXPORT_WEIGHTS) if (p / name).is_file()]
        if not found:
            raise ConfigError(f"student.checkpoint={p}: the folder holds neither {RUN_WEIGHTS} (a finished run) "
                              f"nor {EXPORT_WEIGHTS} (distill export); give one of those or a .pth/.safetensors file")
        return found[0]
    if not p.is_file():
        raise ConfigError(f"student.checkpoint={p} not found: give a .pth/.safetensors file (timm's or DeiT's), "
                          "a run folder or an exported folder")
    return p


def checkpoint_filter(model: nn.Module) -> Optional[Callable]:
    """The model family's checkpoint filter, or None where it has none (ConViT: shapes must then match).

    timm keeps each family's filter in its model file as `checkpoint_filter_fn` and hands it to the
    builder inside a private `_create_*`; no public registry maps a model to it, so it is looked up
    there (students/vit.py imports its own under that name)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _names(cfg: dict, key: str) -> tuple:
    value = cfg.get(key) or ()
    return (value,) if isinstance(value, str) else tuple(value)


def _check_keys(model: nn.Module, state: dict, file: Path, heads: tuple) -> None:
    """Everything but the classifier must be there and nothing else: timm's loader goes non-strict when it
    drops a classifier, and would then skip a checkpoint of another architecture without a word."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(heads) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.startswith(heads)]
    parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} in all)"
             for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if parts:
        name = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise ConfigError(f"student.checkpoint={file} does not fit student.model={name}: {'; '.join(parts)}; "
                          "give weights of the same architecture")


def load_start(model: nn.Module, path, in_chans: int) -> nn.Module:
    """Load `student.checkpoint` into the built student through timm's loader; returns the model."""
    file = start_weights_file(path)
    state = read_state_dict(file, role="start")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    filter_fn = checkpoint_filter(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    heads = _names(cfg, "classifier")
    _check_keys(model, state, file, tuple(f"{h}." for h in heads))
    # What the checkpoint was trained for, read from its tensors, so that timm adapts from the truth:
    # the classifier's rows (-1 where it has none: the model keeps its new head) and the first conv's channels
    head = state.get(f"{heads[0]}.weight") if heads else None
    conv = next((state[f"{c}.weight"] for c in _names(cfg, "first_conv") if f"{c}.weight" in state), None)
    source = dict(cfg, state_dict=state, num_classes=head.shape[0] if head is not None else -1,
                  input_size=(conv.shape[1] if conv is not None else in_chans, *cfg.get("input_size", (3, 224, 224))[1:]))
    try:
        load_pretrained(model, pretrained_cfg=source, num_classes=model.num_classes, in_chans=in_chans)
    except (RuntimeError, ValueError) as e:  # tensors of another shape: torch lists them, one per line
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or [first_line(e)]
        raise ConfigError(f"student.checkpoint={file} does not fit student.model="
                          f"{cfg.get('architecture', type(model).__name__)}: {lines[0][:240]}"
                          f"{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}") from None
    return model
