"""`distill export RUN_DIR OUT`: a run's trained student in timm's hub layout, for timm alone.

OUT holds the two files timm's `save_for_hf` writes (it writes them here, so the layout is timm's own):
`config.json` ("architecture", "num_classes", "num_features", "model_args": the constructor arguments,
"pretrained_cfg": input_size, mean, std, crop_pct, ...) and `model.safetensors`. Then, with no
`distill` installed:

    import timm, students  # students registers distill_vit_*; a plain timm student needs only timm
    model = timm.create_model("local-dir:OUT", pretrained=True)

To publish it where the network allows: `huggingface_hub.upload_folder(repo_id="USER/NAME",
folder_path=OUT)`, or `timm.models.push_to_hf_hub(model, "USER/NAME")` on the model loaded above
(it writes the same two files, plus a model card, into one commit); then
`timm.create_model("hf-hub:USER/NAME", pretrained=True)` loads it anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import yaml
from timm.models import get_pretrained_cfg_value, save_for_hf

from distill.config import DataConfig
from distill.recipe import load_config
from distill.data.sources import SOURCES
from distill.errors import ConfigError
from distill.runs.durable import check_folder_path
from distill.runs.records import CONFIG, SUMMARY
from distill.models import build_student
from students import DistillViT
from distill.models import read_state_dict

WEIGHTS, EMA_WEIGHTS = "student.safetensors", "student_ema.safetensors"


def run_weights(run_dir: Path, ema: bool = False) -> Path:
    """The student weights a finished run left (`ema`: its EMA weights), for `eval` and `export`;
    one-line errors that tell a non-run, an unfinished run and a run without EMA apart."""
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG}); pass runs/<name>")
    weights = run_dir / (EMA_WEIGHTS if ema else WEIGHTS)
    if weights.is_file():
        return weights
    trained_ema = ((yaml.safe_load((run_dir / CONFIG).read_text()) or {}).get("train") or {}).get("ema")
    if ema and not trained_ema:
        raise ConfigError(f"{run_dir} has no EMA weights: it trained with train.ema=false; "
                          "drop --ema (or train with train.ema=true)")
    if not (run_dir / SUMMARY).is_file():
        raise ConfigError(f"{weights} not found: the run has not finished (resume it with train.resume=auto)")
    raise ConfigError(f"{weights} is missing from the finished run: restore the file, or train the run again")


def classes_and_channels(state: Dict[str, torch.Tensor], model_name: str) -> Tuple[int, int]:
    """(num_classes, in_chans) read from the classifier and first conv weights, so no dataset is needed."""
    classifier = get_pretrained_cfg_value(model_name, "classifier") or "head"
    first_conv = get_pretrained_cfg_value(model_name, "first_conv") or "patch_embed.proj"
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    first_conv = first_conv[0] if isinstance(first_conv, (tuple, list)) else first_conv
    if f"{first_conv}.weight" not in state:
        raise ConfigError(f"the weights have no {first_conv}.weight, the first conv of {model_name}: "
                          "they are not this run's student")
    head = state.get(f"{classifier}.weight")  # absent: num_classes=0, an identity head
    return (head.shape[0] if head is not None else 0), state[f"{first_conv}.weight"].shape[1]


def data_stats(cfg: DataConfig, in_chans: int) -> Optional[dict]:
    """The mean/std the run normalised with: the config's if it has them, else the dataset's published
    constants (the registered source's); None where only the images know them (hf datasets)."""
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None or std is None:
        source = SOURCES.get(cfg.name)
        mean, std = (source.mean, source.std) if source else (None, None)
    if mean is None or len(mean) != in_chans or len(std) != in_chans:
        return None
    return dict(mean=tuple(mean), std=tuple(std))


def vit_args(model: DistillViT) -> dict:
    """The constructor arguments that define a DistillViT (drop rates are training-only: left out)."""
    fc1, qkv = model.blocks[0].mlp.fc1, model.blocks[0].attn.qkv
    return dict(patch_size=model.patch_embed.patch_size, embed_dim=model.embed_dim, depth=len(model.blocks),
                num_heads=model.blocks[0].attn.num_heads, mlp_ratio=fc1.out_features / model.embed_dim,
                qkv_bias=qkv.bias is not None, distilled=model.distilled)


# what a timm model's pretrained_cfg says of the hub weights it was registered with (ImageNet's), not of
# this run's: their source and tag, and the larger size they were tested at
SOURCE_KEYS = ("tag", "url", "hf_hub_id", "hf_hub_filename", "file", "source", "test_input_size", "test_crop_pct",
               "test_pool_size")


def own_pretrained_cfg(config_json: Path, data_config: dict, num_classes: int) -> None:
    """Rewrite the exported pretrained_cfg to describe the run: its input size, channels, normalisation and
    classes (`data_config`), without SOURCE_KEYS. timm's `save_for_hf` starts from the model's registered
    cfg, so a resnet18 trained at 32 px kept `input_size` 224, `test_input_size` 288 and tag `a1_in1k`, and
    `timm.data.resolve_data_config` fed the export the wrong size."""
    config = json.loads(config_json.read_text())
    cfg = {k: v for k, v in config["pretrained_cfg"].items() if k not in SOURCE_KEYS}
    cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}, num_classes=num_classes)
    config["pretrained_cfg"] = cfg
    config_json.write_text(json.dumps(config, indent=2) + "\n")


def export_run(run_dir: Path, out_dir: Path, ema: bool = False) -> Path:
    """Write the run's student (`ema`: its EMA weights) into the new folder `out_dir`; returns it.

    Refuses a non-empty `out_dir`. Writes a temporary sibling folder, then renames it into place,
    so `out_dir` is either complete or absent.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not empty: export into a new folder")
    check_folder_path(out_dir, "the export folder")
    weights = run_weights(run_dir, ema)
    cfg = load_config(str(run_dir / CONFIG), ["train.resume=''"])
    if cfg.student.small_input_stem:
        raise ConfigError("student.small_input_stem=true rewrites the model after timm builds it, so timm "
                          "alone cannot rebuild it: export supports students timm builds as they are")
    state = read_state_dict(weights, role="student")  # one line for a damaged file
    num_classes, in_chans = classes_and_channels(state, cfg.student.model)
    student_cfg = dataclasses.replace(cfg.student, pretrained=False)  # the weights come from the run
    model = build_student(student_cfg, num_classes, in_chans, cfg.data.img_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{weights} does not fit {cfg.student.model} as {CONFIG} builds it ({first})") from None
    # crop=pad feeds whole images (padded or resized to img_size), never a centre crop: crop_pct 1;
    # crop=rrc evaluates through timm's own eval transform, whose settings travel with the weights
    size = cfg.data.img_size
    data_config = dict(input_size=(in_chans, size, size), crop_pct=1.0, **(data_stats(cfg.data, in_chans) or {}))
    if cfg.data.crop == "rrc":
        data_config["crop_pct"] = cfg.data.crop_pct
        if cfg.data.interpolation != "random":
            data_config["interpolation"] = cfg.data.interpolation
    model_args = vit_args(model) if isinstance(model, DistillViT) else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_for_hf(model, str(tmp), model_args=model_args, safe_serialization=True, data_config=data_config)
        own_pretrained_cfg(tmp / "config.json", data_config, num_classes)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above): rename needs the name free
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
