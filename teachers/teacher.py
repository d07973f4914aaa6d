"""Teachers: any timm model, built, loaded and frozen, that takes the student's batch.

`load_teacher(cfg.teacher, ...)` returns a `Teacher`: frozen, always in eval mode, adapting the
student's batch (normalisation, gray -> RGB, resolution) to what the teacher was trained on, and
returning logits. The trainer runs it under `no_grad` and hands the logits to the loss.
"""
from __future__ import annotations

import argparse
import difflib
import itertools
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from distill.errors import CheckpointError, TeacherError, first_line  # TeacherError: re-exported

RUN_WEIGHTS = "student.safetensors"  # what a run of this framework leaves in its folder
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # EMA first, like timm
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


# ----------------------------------------------------------------------------- building

def _first_conv(model: nn.Module) -> Optional[tuple]:
    """(name, module) of the input conv: `pretrained_cfg['first_conv']`, else the first Conv2d."""
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    modules = dict(model.named_modules())
    if isinstance(modules.get(name), nn.Conv2d):
        return name, modules[name]
    return next(((n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)), None)


def _model_name(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__


def adapt_small_input_stem(model: nn.Module) -> nn.Module:
    """CIFAR-style stem: the first conv becomes 3x3 stride 1, the stem max-pool an identity.

    At 32px an ImageNet stem (7x7 stride 2 + max-pool) leaves an 8x8 map for the first stage;
    this keeps the full resolution. Raises TeacherError for models without a conv stem (ViTs).
    """
    found = _first_conv(model)
    if found is None or hasattr(model, "patch_embed"):
        raise TeacherError(f"small_input_stem=true needs a CNN with a conv stem; {_model_name(model)} has "
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


def _unknown_model(name: str, key: str) -> TeacherError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    stem = "".join(itertools.takewhile(str.isalpha, name.lower())) or name  # "resnet50d" -> "resnet"
    return TeacherError(f"{key}={name}: unknown model; {hint}list names with timm.list_models('*{stem}*')")


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
    if not timm.is_model(name) and name.startswith("distill_vit_"):
        import students  # noqa: F401  (registers distill_vit_*; imported late to avoid a cycle)
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


# ----------------------------------------------------------------------------- loading

def _resolve(path) -> Path:
    p = Path(path)
    if p.is_dir():
        if not (p / RUN_WEIGHTS).is_file():
            raise TeacherError(f"run folder {p} has no {RUN_WEIGHTS}: let that run finish, or point "
                               "teacher.checkpoint at a .safetensors/.pth file")
        return p / RUN_WEIGHTS
    if not p.is_file():
        raise TeacherError(f"teacher checkpoint {p} not found: train a teacher first with a teacher "
                           "recipe from recipes/ and set teacher.checkpoint to its run folder")
    if p.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise TeacherError(f"teacher checkpoint {p}: expected a .safetensors, .pth or .pt file, or a run folder")
    return p


# What the one-line errors call the weights, and their fix, by who loads them: a teacher
# (teacher.checkpoint) or `distill eval`/`export` (a run's own student.safetensors).
_ROLES = {
    "teacher": dict(error=TeacherError, what="teacher checkpoint",
                    damaged="the file is damaged or not a checkpoint",
                    classes="set data/teacher to match", chans="use a teacher trained on this data",
                    stem="set teacher.small_input_stem to how the teacher was trained",
                    fit="check teacher.model, teacher.img_size and teacher.small_input_stem"),
    "student": dict(error=CheckpointError, what="student file",
                    damaged="the file is damaged: restore it or train the run again",
                    classes="drop the data.* overrides that change the classes",
                    chans="drop the data.* overrides that change the channels",
                    stem="the run's config.yaml does not build the model the file was saved from",
                    fit="the run's config.yaml does not build the model the file was saved from"),
    "start": dict(error=CheckpointError, what="student.checkpoint", damaged="the file is damaged or not a checkpoint",
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
    """Raise one TeacherError naming the first mismatch a user can fix, before load_state_dict."""
    own, words = model.state_dict(), _ROLES[role]
    for name in _classifier_names(model):
        key = f"{name}.weight"
        if key in state and key in own and state[key].shape[0] != own[key].shape[0]:
            raise words["error"](f"{words['what']} {path} has {state[key].shape[0]} classes but the {role} is "
                               f"built with {own[key].shape[0]} ({words['classes']})")
    conv = _first_conv(model)
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
        raise words["error"](f"{words['what']} {path} does not fit {role}.model={_model_name(model)}: "
                           f"{'; '.join(parts)}; {words['fit']}")


def load_weights(model: nn.Module, path, role: str = "teacher") -> nn.Module:
    """Load a .safetensors/.pth/.pt file, or `<run folder>/student.safetensors`, into `model`;
    `role` ("teacher" or "student": `distill eval`) words the one-line errors."""
    path = _resolve(path)
    state = read_state_dict(path, role)
    _check_compatible(model, state, path, role)
    model.load_state_dict(state, strict=False)  # strict in all but num_batches_tracked (checked above)
    return model


# ----------------------------------------------------------------------------- the module

def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)


class Teacher(nn.Module):
    """A frozen model in eval mode that takes the student's batch and returns logits.

    Args:
        data_mean, data_std: the normalisation of the student's batch (one value per data channel).
        mean, std: the teacher's normalisation; None = the data's (no re-normalisation).
        in_chans: the teacher's input channels; None = its first conv's. Gray data (1 channel)
            into a 3-channel teacher is repeated across channels.
        img_size: resize the batch to img_size x img_size (bilinear) first; None keeps it.
    """

    def __init__(self, model: nn.Module, data_mean: Sequence[float], data_std: Sequence[float],
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 in_chans: Optional[int] = None, img_size: Optional[int] = None):
        super().__init__()
        conv = _first_conv(model)
        self.in_chans = in_chans or (conv[1].in_channels if conv else len(data_mean))
        data_chans = len(data_mean)
        if data_chans != self.in_chans and data_chans != 1:
            raise TeacherError(f"the data has {data_chans} channels but the teacher takes in_chans={self.in_chans}; "
                               "only gray (1) -> RGB is adapted")
        if (mean is None) != (std is None):
            raise TeacherError("set both teacher.mean and teacher.std, or neither")
        self.model = model
        self.img_size = img_size
        self.expand = data_chans != self.in_chans  # (B, 1, H, W) -> (B, C, H, W)

        mean_s, std_s = _channels(data_mean), _channels(data_std)
        mean_t, std_t = (mean_s, std_s) if mean is None else (_channels(mean), _channels(std))
        for t, what in ((mean_t, "mean"), (std_t, "std")):
            if t.shape[1] not in (1, self.in_chans):
                raise TeacherError(f"teacher.{what} has {t.shape[1]} values; give 1 or in_chans={self.in_chans}")
        ones = torch.ones(1, self.in_chans, 1, 1)
        self.renorm = not (torch.equal(mean_s * ones, mean_t * ones) and torch.equal(std_s * ones, std_t * ones))
        # (x * std_s + mean_s - mean_t) / std_t as one affine map per channel, (1, C, 1, 1) each
        self.register_buffer("scale", std_s / std_t * ones, persistent=False)
        self.register_buffer("shift", (mean_s - mean_t) / std_t * ones, persistent=False)

        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        """Always eval: BatchNorm statistics and dropout of a teacher must not change."""
        return super().train(False)

    def _adapt_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm:  # broadcasting (B, 1, H, W) against (1, C, 1, 1) also repeats gray
            return x * self.scale + self.shift
        return x.expand(-1, self.in_chans, -1, -1) if self.expand else x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                             align_corners=False, antialias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_data, H, W) normalised as the data -> (B, num_classes) teacher logits."""
        with torch.no_grad():  # a teacher never needs a graph, whoever calls it
            return self.model(self._inputs(x))

    def pooled_features(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """(B, C_data, H, W) -> (B, C_i): intermediate `index` of timm's `forward_intermediates`
        (a stage of a CNN, a block of a ViT), averaged over its spatial positions."""
        with torch.no_grad():
            feature_map = self.model.forward_intermediates(self._inputs(x), indices=[index], intermediates_only=True)[0]
            return feature_map.mean(dim=(2, 3))  # (B, C_i, h, w) -> (B, C_i)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_data, H, W) -> (B, D): timm's pooled pre-logits features, the input of the classifier."""
        with torch.no_grad():
            return self.model.forward_head(self.model.forward_features(self._inputs(x)), pre_logits=True)

    def check_input(self, in_chans: int, img_size: int) -> None:
        """Run one blank image of the student's shape; a model that cannot take it (a ViT built for
        224 px given 32 px) raises one TeacherError naming `teacher.img_size`."""
        try:
            self(torch.zeros(1, in_chans, img_size, img_size, device=self.scale.device))
        except (AssertionError, RuntimeError, ValueError) as e:
            native = getattr(self.model, "pretrained_cfg", {}).get("input_size", (None,))[-1]
            example = f" (e.g. teacher.img_size={native}, its default)" if native and native != img_size else ""
            raise TeacherError(f"teacher.model={_model_name(self.model)} cannot take the {img_size}x{img_size} "
                               f"batch ({first_line(e)}); set teacher.img_size to the size it was built or trained "
                               f"for{example}: the teacher resizes the batch to it") from None

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as `self.model` takes it, for a caller that runs the model its own way (a
        method's `TeacherTaps` asks for intermediate layers)."""
        return self._inputs(x)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher's model takes it: its channels, normalisation and size."""
        resize = self.img_size is not None and tuple(x.shape[-2:]) != (self.img_size, self.img_size)
        # Per-channel affine maps commute with bilinear resizing: adapt at the smaller size.
        if resize and x.shape[-1] > self.img_size:
            x, resize = self._resize(x), False
        x = self._adapt_pixels(x)
        if resize:
            x = self._resize(x)
        return x


def load_teacher(cfg, num_classes: int, in_chans: int, data_mean: Sequence[float],
                 data_std: Sequence[float]) -> Teacher:
    """Build `cfg.model` (a TeacherConfig), load its weights, freeze it, wrap it as a `Teacher`.

    Weights: `cfg.checkpoint` if set, else hub weights if `cfg.pretrained`, else none (tests).
    Normalisation: `cfg.mean/std`, else the hub weights' (pretrained), else the data's (a teacher
    trained by this framework shares the student's normalisation).
    """
    if not cfg.model:
        raise TeacherError("teacher.model is not set: name a timm model (e.g. teacher.model=resnet18)")
    hub = cfg.pretrained and not cfg.checkpoint
    # Hub weights are RGB: build 3 channels and let the Teacher repeat a gray batch.
    chans = 3 if hub and in_chans == 1 else in_chans
    build = dict(num_classes=num_classes, in_chans=chans, pretrained=hub, small_input_stem=cfg.small_input_stem,
                 fix="give teacher.checkpoint=FILE (a .safetensors/.pth file or a run folder) instead")
    model = create_model_at(cfg.model, cfg.img_size, **build)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    mean, std = cfg.mean, cfg.std
    if mean is None and std is None and hub:
        mean, std = model.pretrained_cfg.get("mean"), model.pretrained_cfg.get("std")
    return Teacher(model, data_mean, data_std, mean=mean, std=std, in_chans=chans, img_size=cfg.img_size)
