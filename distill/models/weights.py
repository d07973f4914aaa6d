"""Weights from a file or a run folder into a model, for any role (a teacher, a run's own student, a
student's start weights), with one-line errors worded for that role."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from distill.errors import CheckpointError, TeacherError
from distill.models.create import first_conv, model_name

RUN_WEIGHTS = "student.safetensors"  # what a run of this framework leaves in its folder
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # EMA first, like timm
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _resolve(path, role: str) -> Path:
    """The weights file `path` names: itself, or a run folder's student.safetensors."""
    p, words = Path(path), _ROLES[role]
    if p.is_dir():
        if not (p / RUN_WEIGHTS).is_file():
            raise words["error"](f"run folder {p} has no {RUN_WEIGHTS}: let that run finish, or point "
                                 f"{words['key']} at a .safetensors/.pth file")
        return p / RUN_WEIGHTS
    if not p.is_file():
        raise words["error"](f"{words['what']} {p} not found: {words['missing']}")
    if p.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise words["error"](f"{words['what']} {p}: expected a .safetensors, .pth or .pt file, or a run folder")
    return p


# What the one-line errors call the weights, and their fix, by who loads them: a teacher
# (teacher.checkpoint) or `distill eval`/`export` (a run's own student.safetensors).
_ROLES = {
    "teacher": dict(error=TeacherError, what="teacher checkpoint", key="teacher.checkpoint",
                    missing="train a teacher first with a teacher recipe from recipes/ and set teacher.checkpoint "
                            "to its run folder",
                    damaged="the file is damaged or not a checkpoint",
                    classes="set data/teacher to match", chans="use a teacher trained on this data",
                    stem="set teacher.small_input_stem to how the teacher was trained",
                    fit="check teacher.model, teacher.img_size and teacher.small_input_stem"),
    "student": dict(error=CheckpointError, what="student file", key="the run folder",
                    missing="the run folder has lost its weights: train the run again",
                    damaged="the file is damaged: restore it or train the run again",
                    classes="drop the data.* overrides that change the classes",
                    chans="drop the data.* overrides that change the channels",
                    stem="the run's config.yaml does not build the model the file was saved from",
                    fit="the run's config.yaml does not build the model the file was saved from"),
    "start": dict(error=CheckpointError, what="student.checkpoint", key="student.checkpoint",
                  missing="give a .safetensors/.pth file or a run folder", damaged="the file is damaged or not a checkpoint",
                  classes="", chans="", stem="", fit="give weights of the same architecture as student.model"),
}


def read_state_dict(path: Path, role: str = "teacher") -> dict:
    """The tensors of a checkpoint, unwrapped from timm/DeiT containers, wrapper prefixes removed.
    `role` ("teacher" or "student") words the one-line errors."""
    words = _ROLES[role]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:  # tensors only; DeiT checkpoints also carry an argparse.Namespace of their args
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any failure here means the same to the user)
        if not _weights_format(path):
            raise words["error"](f"cannot read {words['what']} {path}: it is not a weights file distill can read "
                                 "(a .safetensors file, or a state dict saved by torch.save)") from None
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise words["error"](f"cannot read {words['what']} {path} ({type(e).__name__}: {first}); "
                           f"{words['damaged']}") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise words["error"](f"{words['what']} {path} holds no state dict (looked for a dict of tensors, "
                           f"or one under {'/'.join(_WRAPPER_KEYS)})")
    return strip_prefixes(obj)


def _weights_format(path: Path) -> bool:
    """Whether the file opens as safetensors (a header length, then JSON), torch.save's zip or a pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or head[8:9] == b"{"


def strip_prefixes(state: dict) -> dict:
    """Keys as the bare model names them: `module._orig_mod.head.weight` -> `head.weight`."""
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _classifier_names(model: nn.Module) -> list:
    names = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [names] if isinstance(names, str) else list(names or [])
    if not names and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names = [n for n, m in model.named_modules() if m is head]
    return names


def _check_compatible(model: nn.Module, state: dict, path: Path, role: str = "teacher") -> None:
    """Raise the role's one-line error naming the first mismatch a user can fix, before load_state_dict."""
    own, words = model.state_dict(), _ROLES[role]
    for name in _classifier_names(model):
        key = f"{name}.weight"
        if key in state and key in own and state[key].shape[0] != own[key].shape[0]:
            raise words["error"](f"{words['what']} {path} has {state[key].shape[0]} classes but the {role} is "
                               f"built with {own[key].shape[0]} ({words['classes']})")
    conv = first_conv(model)
    key = f"{conv[0]}.weight" if conv else None
    if key in state and key in own and state[key].shape != own[key].shape:
        (_, ck_in, *ck_k), (_, own_in, *own_k) = state[key].shape, own[key].shape  # (out, in, kh, kw)
        if ck_in != own_in:
            raise words["error"](f"{words['what']} {path} expects in_chans={ck_in} but the {role} is built with "
                               f"in_chans={own_in} (from the data): {words['chans']}")
        if ck_k != own_k:  # same kernel, other width: the listing below names it
            raise words["error"](f"{words['what']} {path} has a {tuple(ck_k)} first conv, the {role} "
                               f"{tuple(own_k)}: {words['stem']}")
    bad_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if bad_shape or missing or unexpected:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} in all)"
                 for label, keys in (("shape mismatch at", bad_shape), ("missing", missing),
                                     ("unexpected", unexpected)) if keys]
        raise words["error"](f"{words['what']} {path} does not fit {role}.model={model_name(model)}: "
                           f"{'; '.join(parts)}; {words['fit']}")


def load_weights(model: nn.Module, path, role: str = "teacher") -> nn.Module:
    """Load a .safetensors/.pth/.pt file, or `<run folder>/student.safetensors`, into `model`;
    `role` ("teacher" or "student": `distill eval`) words the one-line errors."""
    path = _resolve(path, role)
    state = read_state_dict(path, role)
    _check_compatible(model, state, path, role)
    model.load_state_dict(state, strict=False)  # strict in all but num_batches_tracked (checked above)
    return model
