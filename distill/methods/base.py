"""A distillation method: one registered class per `distill.type`, the training loss of a run.

A method owns everything that is particular to it: its loss terms (small pure functions in its own
file), its config keys under `distill.` (`keys`; the typed config is assembled from them), the
rules that say what it works with (a distillation token, the logit cache, a top-k cache,
Mixup/CutMix targets), and the model wrapping it needs (`wrap`: feature's projection). The config
reads its choices and rules from the registry, so adding a method is one new file in
`distill/methods/` and one import line in its `__init__`.

DeiT semantics, as its `DistillationLoss`: the base criterion scores the class head against the
labels; the teacher's term scores the distillation head (or, for a student without one, the same
output). The total is (1 - alpha) * base + alpha * teacher term. The method never owns the teacher:
the step runs it and passes what it returned (`teacher_out`) in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from distill.errors import ConfigError

WEIGHTS = ("alpha", "tau")  # common numeric keys a method uses or not (`Method.reads`); standardize is a switch
STANDARDIZE_EPS = 1e-7  # the reference code's eps (sunshangquan/logit-standardization-KD), added to the std

if TYPE_CHECKING:  # type hints only
    from distill.config import Config

Outputs = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Key:
    """A config key a method owns, `distill.<name>`: its type, default, one line of help, and what
    values it takes (`choices`, or a lower bound `min`)."""

    type: type
    default: Any
    help: str
    choices: Optional[Sequence[Any]] = None
    min: Optional[float] = None


METHODS: Dict[str, Type["Method"]] = {}


def register_method(cls: Type["Method"]) -> Type["Method"]:
    """Class decorator: makes `cls` the method `distill.type=<cls.name>`."""
    assert cls.name not in METHODS, f"distill.type={cls.name} is registered twice ({METHODS.get(cls.name)}, {cls})"
    for key in cls.keys:
        owner = next((m for m in METHODS.values() if key in m.keys), None)
        assert owner is None, f"distill.{key} of {cls.name} is already a key of {owner.name}: pick another name"
    METHODS[cls.name] = cls
    return cls


class Method(nn.Module):
    """The loss of a run with `distill.type=name`: `forward(outputs, targets, teacher_out)` returns
    {'loss': total, 'base': label term, 'distill': teacher term, <the method's parts>}.

    Subclasses set the class attributes below and `term` (or, for a different shape of output,
    `forward`), and read their own keys from `cfg` in `__init__`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `distill methods`
    paper: ClassVar[str] = "-"
    keys: ClassVar[Dict[str, Key]] = {}  # its own keys under `distill.`
    reads: ClassVar[Tuple[str, ...]] = ("alpha",)  # the common `distill.` keys it uses
    needs_teacher: ClassVar[bool] = True
    token: ClassVar[bool] = True  # acts on a distillation token's head when the student has one
    cache: ClassVar[bool] = True  # its teacher output can be recorded and replayed (`distill.cache`)
    topk_cache: ClassVar[bool] = True  # ... also as TinyViT's top-k logits (`distill.cache_topk`)
    mixup: ClassVar[bool] = True  # takes Mixup/CutMix's soft targets
    # The open contract (docs/methods.md). A method may also
    needs_index: ClassVar[bool] = False  # ... take `index=`: each view's dataset index (B,), in [0, num_samples)
    taps: ClassVar[bool] = False  # ... get `Taps` (logits, pre-logits, unpooled layers) from student and teacher
    student_layers: Tuple[int, ...] = ()  # with taps: the student's forward_intermediates indices (set in __init__)
    teacher_layers: Tuple[int, ...] = ()  # ... and the teacher's
    layer_fmt: str = "NCHW"  # ... their layout: NCHW maps, or NLC tokens (ViTs only)
    # ... and own parameters and persistent buffers (built in `setup`): trained, checkpointed and resumed
    # with the student (`WithMethod`), never exported with it

    def __init__(self, cfg, base_criterion: nn.Module):
        """`cfg`: the `DistillConfig`; `base_criterion`: the label term (`build_criterion`)."""
        super().__init__()
        self.base_criterion, self.alpha, self.standardize = base_criterion, cfg.alpha, cfg.standardize
        self.num_samples = 0  # images in the train split, set by `wrap` (a memory bank's rows)

    @classmethod
    def check(cls, cfg: "Config") -> None:
        """Refuse settings this method cannot run with (ConfigError, one line naming the fix)."""
        if cls.needs_teacher and not cfg.teacher.model:
            raise ConfigError(f"distill.type={cls.name} needs a teacher: set teacher.model (and teacher.checkpoint)")
        if cfg.student.distilled and not cls.token:
            raise ConfigError(f"student.distilled=true needs a method that uses the distillation token "
                              f"({', '.join(m.name for m in METHODS.values() if m.token)}); distill.type={cls.name} "
                              "trains the class head alone: set student.distilled=false")
        if cfg.distill.cache and not cls.needs_teacher:
            cached = ", ".join(m.name for m in METHODS.values() if m.cache)
            raise ConfigError(f"distill.cache=true needs a teacher: distill.type={{{cached}}} (a plain run has none)")
        if cfg.distill.cache and (cls.taps or not cls.cache):
            what = "features" if cls.taps else "output"
            raise ConfigError(f"distill.cache=true stores teacher logits, but distill.type={cls.name} needs its "
                              f"teacher's {what} live; set distill.cache=false")
        if cfg.distill.standardize and "standardize" not in cls.reads:
            takes = ", ".join(m.name for m in METHODS.values() if "standardize" in m.reads)
            raise ConfigError(f"distill.standardize=true z-scores logits before a temperature, which "
                              f"distill.type={cls.name} does not use; set it for distill.type={{{takes}}} only")
        if cfg.data.mixing and not cls.mixup:
            raise ConfigError(f"distill.type={cls.name} needs one class per image, which Mixup/CutMix mixes: "
                              "set data.mixup_alpha=0 and data.cutmix_alpha=0 (and data.cutmix_minmax=null)")
        if cfg.distill.cache and cfg.distill.cache_topk and not cls.topk_cache:
            raise ConfigError(f"distill.cache_topk stores top-k logits, which distill.type={cls.name} cannot use; "
                              "set distill.cache_topk=0")
        cls._check_common_keys(cfg)
        for other in METHODS.values() if cls.needs_teacher else ():  # a plain run ignores them (study overrides)
            for key, spec in other.keys.items():
                if other is not cls and getattr(cfg.distill, key) != spec.default:
                    raise ConfigError(f"distill.{key}={getattr(cfg.distill, key)} applies to distill.type={other.name} "
                                      f"only; remove it or set distill.type={other.name}")

    @classmethod
    def _check_common_keys(cls, cfg: "Config") -> None:
        """A common key this method does not read (`reads`), set away from its default, is refused, as
        another method's own key is: `distill.type=hard distill.tau=3` would train as if tau were 1."""
        defaults = {f.name: f.default for f in dataclasses.fields(cfg.distill)}
        for key in WEIGHTS:
            value = getattr(cfg.distill, key)
            if key not in cls.reads and value != defaults[key]:
                takes = ", ".join(m.name for m in METHODS.values() if key in m.reads)
                raise ConfigError(f"distill.{key}={value} is not read by distill.type={cls.name}; remove it, or "
                                  f"set it for distill.type={{{takes}}} only")
        if cfg.distill.cache_topk and not cfg.distill.cache:
            raise ConfigError(f"distill.cache_topk={cfg.distill.cache_topk} shapes the logit cache, which is off: "
                              "set distill.cache=true, or remove distill.cache_topk")

    def set_progress(self, epochs: float) -> None:
        """Called before every step with the epochs done once it ends (a fraction within an epoch), for
        weights that follow the schedule (DKD's warm-up). Most methods ignore it."""

    def wrap(self, student: nn.Module, teacher: Optional[nn.Module], in_chans: int, img_size: int,
             num_samples: int = 0):
        """(the module that trains, the teacher the step runs). Most methods train the student itself; a
        method with `taps` gets both wrapped to return `Taps`, and one that owns state after `setup`
        trains beside the student in `WithMethod`. `num_samples`: images in the train split."""
        from distill.methods.taps import StudentTaps, TeacherTaps, WithMethod  # taps imports nothing of this file

        self.num_samples = num_samples
        if self.taps:
            student = StudentTaps(student, self.student_layers, self.layer_fmt)
            teacher = TeacherTaps(teacher, self.teacher_layers, self.layer_fmt) if teacher is not None else None
        self.setup(student, teacher, in_chans, img_size)
        if len(self.state_dict()):  # parameters or persistent buffers: they train and checkpoint with the student
            student = WithMethod(student, self)
        return student, teacher

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], in_chans: int, img_size: int) -> None:
        """Build the method's own modules and buffers, once the models are known (`taps.probe(student,
        in_chans, img_size)` gives their widths; `self.num_samples` the train split's size). Most build none."""

    def split(self, outputs: Outputs) -> Tuple[torch.Tensor, torch.Tensor]:
        """(class logits, the logits the teacher's term scores): the two heads of a distilled student."""
        if isinstance(outputs, (tuple, list)):
            if not self.token:
                raise ValueError(f"the student returns (class, distillation) logits but distill.type={self.name} "
                                 "trains one head: build the student with student.distilled=false")
            return outputs[0], outputs[1]
        return outputs, outputs

    def term(self, logits: torch.Tensor, teacher_logits: torch.Tensor,
             targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(the teacher's term, its named parts for the logs) on fp32 teacher logits."""
        raise NotImplementedError(f"{type(self).__name__} must define term() or forward()")

    def forward(self, outputs: Outputs, targets: torch.Tensor,
                teacher_out: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        cls_logits, logits = self.split(outputs)
        base = self.base_criterion(cls_logits, targets)
        if teacher_out is None:
            raise ValueError(f"distill.type={self.name} needs the teacher's logits: pass teacher_out=teacher(x)")
        if teacher_out.shape != logits.shape:
            raise ConfigError(f"teacher logits {tuple(teacher_out.shape)} do not match the student's "
                              f"{tuple(logits.shape)}: teacher and student need the same classes")
        logits, teacher_logits = logits.float(), teacher_out.float()  # fp32: low-precision KLs are noisy
        if self.standardize:
            logits, teacher_logits = standardize(logits), standardize(teacher_logits)
        distill, parts = self.term(logits, teacher_logits, targets)
        return {"loss": (1 - self.alpha) * base + self.alpha * distill, "base": base, "distill": distill, **parts}


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al. 2024, `distill.standardize=true`): each row's z-score over the
    classes, (z - mean) / (std + eps), with the unbiased std (torch's default, as the reference code).
    The temperature then divides the z-scores, so teacher and student share their logits' relations
    but neither their range nor their offset (the paper's "base temperature" is `distill.tau`)."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + STANDARDIZE_EPS)


def build_criterion(mixup_active: bool, label_smoothing: float) -> nn.Module:
    """The base criterion on the labels.

    With Mixup/CutMix the targets are soft vectors with the smoothing already folded in by timm's
    `Mixup`, so plain soft-target cross-entropy; otherwise label-smoothed or plain cross-entropy.
    """
    if mixup_active:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()


def class_ids(targets: torch.Tensor) -> torch.Tensor:
    """Class ids from targets: (B,) ids as they are; (B, K) soft vectors (Mixup/CutMix, with their
    smoothing) by their argmax, i.e. the class holding the larger share of the mix."""
    return targets.argmax(dim=-1) if targets.dim() == 2 else targets


def build_method(cfg, base_criterion: nn.Module) -> Method:
    """The method `cfg.type` names (`cfg`: the DistillConfig), around the label term."""
    return METHODS[cfg.type](cfg, base_criterion)
