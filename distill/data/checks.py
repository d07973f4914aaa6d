"""The `data.*` keys' checks that need more than a type, a choice or a range: pairs, augmentation
strings timm must understand, and what the device-augmentation path can run."""
from __future__ import annotations

from typing import TYPE_CHECKING

from distill.data.transforms import check_auto_augment
from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.config import DataConfig


def check_range(key: str, value, lo: float, hi: float) -> None:
    """A [min, max] pair inside (lo, hi]."""
    if value is not None and not (len(value) == 2 and lo < value[0] <= value[1] <= hi):
        raise ConfigError(f"data.{key}={list(value)} must be two numbers [min, max] with {lo} < min <= max <= {hi}")


def check_data(d: "DataConfig") -> None:
    """The real-image keys: ranges, pairs, and augmentation strings timm must understand."""
    for key in ("aug_repeats", "recount"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key}={getattr(d, key)} must be >= 1")
    check_range("scale", d.scale, 0.0, 1.0)
    check_range("ratio", d.ratio, 0.0, float("inf"))
    check_range("cutmix_minmax", d.cutmix_minmax, 0.0, 1.0)
    if d.crop_pct == 0:
        raise ConfigError("data.crop_pct=0 must be in (0, 1]")
    if (d.mean is None) != (d.std is None) or (d.std is not None and (len(d.mean) != len(d.std) or min(d.std) <= 0)):
        raise ConfigError(f"data.mean={d.mean} / data.std={d.std}: set both, one value per channel, std > 0")
    if d.crop == "pad" and (d.auto_augment or d.reprob > 0):
        raise ConfigError("data.auto_augment and data.reprob act on per-sample transforms: set data.crop=rrc")
    if d.auto_augment:
        check_auto_augment(d.auto_augment)
    if d.augment_on == "device":
        check_device_augment(d)
    elif d.decode_on == "device":  # the workers path decodes in its workers: the key would be ignored
        raise ConfigError("data.decode_on=device decodes JPEGs on the device for data.augment_on=device only; the "
                          "workers decode for data.augment_on=workers: set data.decode_on=auto (or data.augment_on=device)")


def check_device_augment(d: "DataConfig") -> None:
    """What `data.augment_on=device` can run: timm's RRC, flip, RandAugment and erasing."""
    why = None
    if d.crop != "rrc":
        why = "acts on per-sample transforms: set data.crop=rrc"
    elif d.auto_augment and (d.auto_augment.startswith("augmix") or d.auto_augment in ("3a", "trivialaugment")):
        why = f"runs timm's RandAugment (rand-*) and AutoAugment policies (v0, original) on the device, not {d.auto_augment!r}"
    elif not d.auto_augment and d.color_jitter > 0:
        why = "has no colour jitter on the device: set data.color_jitter=0 or an auto_augment rand-* string"
    elif d.interpolation == "random":
        why = "needs one interpolation (DeiT's: bicubic), not random"
    if why:
        raise ConfigError(f"data.augment_on=device {why}; or set data.augment_on=workers")
