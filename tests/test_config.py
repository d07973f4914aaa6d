from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dataclasses import fields

from distill.cli import main
from distill.config import Config, ConfigError, DataConfig, _read_yaml, to_yaml
from distill.recipe import load_config

RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "studies" not in p.parts)  # studies: test_study
def _recipe_param(p: Path):
    return pytest.param(p, id=p.relative_to(ROOT / "recipes").as_posix())


def test_recipes_exist():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    for ds in ("fashion_mnist", "cifar10"):
        for kind in ("plain_tiny", "hard_tiny", "soft_tiny", "teacher_resnet18"):
            assert f"{ds}/{kind}.yaml" in names
    for size in ("tiny", "small", "base"):
        assert {f"imagenet/deit_{size}.yaml", f"imagenet/deit_{size}_hard.yaml"} <= names
    for size in ("tiny", "small", "medium", "base"):
        assert {f"imagenet/vit_{size}.yaml", f"imagenet/vit_{size}_hard.yaml"} <= names


@pytest.mark.parametrize("recipe", [_recipe_param(p) for p in RECIPES])
def test_every_recipe_loads(recipe):
    cfg = load_config(str(recipe))
    assert isinstance(cfg, Config) and cfg.name


def test_seed_recipe_values():
    cfg = load_config(str(ROOT / "recipes/cifar10/plain_tiny.yaml"))
    assert (cfg.train.lr, cfg.data.batch_size, cfg.train.epochs) == (3e-4, 128, 200)
    assert (cfg.data.cutmix_alpha, cfg.data.mixup_alpha, cfg.data.label_smoothing) == (0.2, 0.0, 0.1)
    assert cfg.data.crop_padding > 0 and cfg.data.hflip and cfg.student.model == "distill_vit_tiny"
    hard = load_config(str(ROOT / "recipes/cifar10/hard_tiny.yaml"))
    assert (hard.distill.type, hard.student.distilled, hard.teacher.model) == ("hard", True, "resnet18")
    assert hard.train.lr == 3e-4  # inherited through the base chain


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 7\n  lr: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  lr: 0.2\n")
    cfg = load_config(str(tmp_path / "b.yaml"), ["train.lr=0.3", "data.train_subset=100"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.train_subset, cfg.name) == (7, 0.3, 100, "b")


def test_mixed_precision_no_survives_yaml_booleans(tmp_path):
    # YAML 1.1 (PyYAML and OmegaConf's dotlist) parses a bare `no` as false
    (tmp_path / "r.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(tmp_path / "r.yaml")).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=yes"])


def test_base_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("override,key", [
    ("data.bogus=1", "data.bogus"),
    ("data.batch_size=abc", "data.batch_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("train.epochs=-1", "train.epochs"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.type=medium", "distill.type"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml"), [override])


def test_cli_config_prints_resolved_and_rejects_bad_override(capsys):
    """In-process (`main` returns the exit status): a subprocess would only add ~6 s of imports."""
    recipe = str(ROOT / "recipes/fashion_mnist/soft_tiny.yaml")
    assert main(["config", recipe, "distill.tau=2.0"]) == 0
    out = capsys.readouterr().out
    assert "tau: 2.0" in out and "type: soft" in out
    assert main(["config", recipe, "train.epochz=3"]) == 2  # a traceback would raise here instead
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.epochz")


def test_kl_reduction_choice():
    assert load_config(None).distill.kl_reduction == "batchmean"
    assert load_config(None, ["distill.kl_reduction=deit"]).distill.kl_reduction == "deit"
    with pytest.raises(ConfigError, match=r"distill\.kl_reduction='sum' is not one of: batchmean, deit"):
        load_config(None, ["distill.kl_reduction=sum"])


@pytest.mark.parametrize("kind", ["kd", "dkd"])
def test_kd_and_dkd_load_and_need_a_teacher(kind):
    recipe = str(ROOT / f"recipes/fashion_mnist/{kind}_tiny.yaml")
    cfg = load_config(recipe)
    assert (cfg.distill.type, cfg.student.distilled, cfg.teacher.model) == (kind, False, "resnet18")
    assert load_config(recipe, ["distill.cache=true"]).distill.cache
    with pytest.raises(ConfigError, match=f"distill.type={kind} needs a teacher"):
        load_config(None, [f"distill.type={kind}"])
    with pytest.raises(ConfigError, match="kl_reduction=deit applies to distill.type=soft only"):
        load_config(recipe, ["distill.kl_reduction=deit"])


def test_kd_and_dkd_settings():
    kd = load_config(str(ROOT / "recipes/fashion_mnist/kd_tiny.yaml"))
    assert (kd.distill.alpha, kd.distill.tau) == (0.9, 4.0)  # Hinton's regime, not soft's DeiT one
    dkd = load_config(str(ROOT / "recipes/fashion_mnist/dkd_tiny.yaml"))
    assert (dkd.distill.dkd_alpha, dkd.distill.dkd_beta, dkd.distill.tau) == (1.0, 8.0, 4.0)
    with pytest.raises(ConfigError, match="distill.type=kd trains the class head alone"):
        load_config(str(ROOT / "recipes/fashion_mnist/kd_tiny.yaml"), ["student.distilled=true"])
    assert load_config(str(ROOT / "recipes/fashion_mnist/dkd_tiny.yaml"), ["student.distilled=true"]).student.distilled
    with pytest.raises(ConfigError, match=r"distill\.dkd_beta=-1\.0 must be >= 0"):
        load_config(None, ["distill.dkd_beta=-1"])
    with pytest.raises(ConfigError, match=r"distill.cache=true needs a teacher: distill.type=\{soft, hard, kd, dkd, dist\}"):
        load_config(None, ["distill.cache=true"])


IMAGENET = sorted((ROOT / "recipes/imagenet").glob("[!_]*.yaml"))


@pytest.mark.parametrize("recipe", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_recipes_hold_deits_settings(recipe, tmp_path):
    """The merged YAML holds DeiT's recipe throughout, and loads into the typed config."""
    raw = _read_yaml(recipe)
    cfg = load_config(str(recipe))
    assert cfg.train.lr == 5e-4 and cfg.data.name == "imagefolder" and cfg.name == raw["name"]
    data, train, student = raw["data"], raw["train"], raw["student"]
    assert set(data) <= {f.name for f in fields(DataConfig)}
    assert (data["name"], data["img_size"], data["auto_augment"], data["reprob"]) == (
        "imagefolder", 224, "rand-m9-mstd0.5-inc1", 0.25)
    assert (data["crop"], data["aug_repeats"], data["mixup_alpha"], data["cutmix_alpha"]) == ("rrc", 3, 0.8, 1.0)
    assert (train["lr"], train["epochs"], train["min_lr"], student["drop_path_rate"]) == (5e-4, 300, 1e-5, 0.1)
    assert data["batch_size"] * 8 == 1024  # DeiT's global batch on 8 processes; lr = 5e-4 x 1024 / 512
    defaults = Config()  # DeiT's values that are already the defaults
    assert (defaults.train.warmup_epochs, defaults.train.weight_decay, defaults.train.lr_base_batch) == (5, 0.05, 512)
    assert defaults.data.label_smoothing == 0.1 and "label_smoothing" not in data
    hard = recipe.stem.endswith("_hard")
    assert ("teacher" in raw) == hard and raw["name"] == f"imagenet_{recipe.stem}"
    if hard:
        assert (raw["teacher"]["model"], raw["teacher"]["pretrained"]) == ("regnety_160.deit_in1k", True)
        assert (raw["distill"]["type"], student["distilled"]) == ("hard", True)
    if recipe.stem.startswith("vit_"):  # the seed's ladder at 224 px: patch 16
        assert student["patch_size"] == 16 and student["model"] == f"distill_vit_{recipe.stem.split('_')[1]}"
    else:
        assert student["model"] == f"distill_vit_deit_{recipe.stem.split('_')[1]}"


def test_aug_seed_is_resolved_once_at_load_and_saved_resolved():
    assert load_config(None, ["seed=3"]).data.aug_seed == 3
    assert load_config(None, ["seed=3", "data.aug_seed=7"]).data.aug_seed == 7
    assert "aug_seed: 3" in to_yaml(load_config(None, ["seed=3"]))


def test_cache_key_and_resume_rules_come_from_the_fields_metadata():
    """No hand list: a DataConfig field marked `views` enters the cache key, `may_differ` the resume rule."""
    from distill.config import VIEWS, may_differ_on_resume, view_keys

    groups = view_keys(DataConfig())
    assert set(groups) == {"data", "views"}
    marked = {f.name for f in fields(DataConfig) if VIEWS in f.metadata}
    assert set(groups["data"]) | set(groups["views"]) == marked
    assert {"crop", "auto_augment", "batch_size", "mixup_alpha"} <= marked
    assert not {"num_workers", "eval_batch_size", "aug_seed"} & marked  # aug_seed: its own entry in the key
    may = may_differ_on_resume()
    assert {"train.epochs", "train.resume", "distill.cache", "output_dir", "data.root"} <= may
    assert not {"train.lr", "seed", "data.crop", "distill.type"} & may


def test_a_run_written_before_new_keys_and_a_resolved_aug_seed_resumes(tmp_path):
    """config.yaml of an earlier version: no distill.dist_beta, no student.embed_dim, aug_seed null.
    The keys it lacks count as their defaults; a real difference is still refused."""
    from distill.runs.folder import _check_same_run

    cfg = load_config(None, ["seed=2"])
    old = yaml.safe_load(to_yaml(cfg))
    del old["distill"]["dist_beta"], old["student"]["embed_dim"]
    old["data"]["aug_seed"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_same_run(cfg, tmp_path)
    with pytest.raises(ConfigError, match="train.lr=0.1 differs from the run being resumed"):
        _check_same_run(load_config(None, ["seed=2", "train.lr=0.1"]), tmp_path)
