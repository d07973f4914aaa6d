"""Teacher-logit cache: a cached run replays exactly what a live run computed. The runs go through the
CLI's `main` in this process (a fresh interpreter would add ~6 s of imports a run), compared with each other."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import needs_fmnist, run_main
from distill.models import create_model

pytestmark = [needs_fmnist, pytest.mark.slow]  # real training runs: the full tier only

RUN = ["data.train_subset=512", "data.test_subset=200", "data.batch_size=32", "train.epochs=2",
       "train.warmup_epochs=0.2", "train.log_every=16", "teacher.model=resnet10t", "teacher.small_input_stem=false",
       "distill.cache=true", "data.aug_seed=0"]  # CutMix stays on: its mixed views are cached too


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A run-folder-shaped teacher (weights need not be good to test the cache)."""
    d = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    save_file(create_model("resnet10t", num_classes=10, in_chans=1).state_dict(), str(d / "student.safetensors"))
    return d


def distilled(out, teacher_dir, name, *extra):
    res = run_main("train", "recipes/fashion_mnist/hard_tiny.yaml", f"output_dir={out}", f"name={name}",
                   f"teacher.checkpoint={teacher_dir}", *RUN, *extra)
    return res


def test_cached_run_replays_the_live_run(tmp_path, teacher_dir):
    first = distilled(tmp_path, teacher_dir, "live")
    assert first.returncode == 0, first.stderr[-2000:]
    caches = list((teacher_dir / "logit_cache").iterdir())
    assert len(caches) == 1 and len(list(caches[0].glob("epoch_*.safetensors"))) == 2  # both epochs recorded
    second = distilled(tmp_path, teacher_dir, "cached")
    assert second.returncode == 0, second.stderr[-2000:]
    live, cached = (load_file(str(tmp_path / n / "student.safetensors")) for n in ("live", "cached"))
    assert all(torch.equal(live[k], cached[k]) for k in live)  # bit for bit
    # another init seed with the same views shares the cache; another student too
    third = distilled(tmp_path, teacher_dir, "seed1", "seed=1", "distill.type=soft")
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(list((teacher_dir / "logit_cache").iterdir())) == 1
    other = load_file(str(tmp_path / "seed1" / "student.safetensors"))
    assert any(not torch.equal(other[k], live[k]) for k in live)


def test_alpha_zero_distillation_is_plain_training(tmp_path, teacher_dir):
    """Plain, live-teacher and cached-teacher runs see the same views: at alpha=0 they must agree exactly."""
    plain = distilled(tmp_path, teacher_dir, "plain", "train.epochs=1", "distill.type=none", "distill.cache=false",
                      "student.distilled=false")
    assert plain.returncode == 0, plain.stderr[-2000:]
    zero = distilled(tmp_path, teacher_dir, "alpha0", "train.epochs=1", "distill.alpha=0", "student.distilled=false")
    assert zero.returncode == 0, zero.stderr[-2000:]
    a, b = (load_file(str(tmp_path / n / "student.safetensors")) for n in ("plain", "alpha0"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_replay_reads_the_cache_and_a_stale_cache_is_an_error(tmp_path, teacher_dir):
    assert distilled(tmp_path, teacher_dir, "fill", "train.epochs=1").returncode == 0
    paths = list((teacher_dir / "logit_cache").rglob("epoch_0000_*.safetensors"))
    recorded = {p: load_file(str(p))["logits"] for p in paths}
    # changed after the checked first step: the check passes, and the student must learn from the file
    for p, logits in recorded.items():
        save_file({"logits": torch.cat([logits[:1], logits[1:].flip(-1)])}, str(p))
    res = distilled(tmp_path, teacher_dir, "replayed", "train.epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    fill, replayed = (load_file(str(tmp_path / n / "student.safetensors")) for n in ("fill", "replayed"))
    assert any(not torch.equal(fill[k], replayed[k]) for k in fill)  # the replay used the file, not the teacher
    for p, logits in recorded.items():
        save_file({"logits": logits + 5.0}, str(p))  # the first step no longer what the teacher says
    res = distilled(tmp_path, teacher_dir, "stale", "train.epochs=1")
    assert res.returncode == 2 and "cache is stale" in res.stderr and "Traceback" not in res.stderr


def test_topk_cache_hard_replay_is_the_live_run(tmp_path, teacher_dir):
    """k=3 of 10 classes: the replayed logits keep the teacher's argmax, so hard distillation is bit for bit
    the live run that recorded them (soft distillation differs: tests/test_cache_topk.py)."""
    extra = ["train.epochs=1", "distill.cache_topk=3"]  # 16 steps keep it short
    live = distilled(tmp_path, teacher_dir, "live_k3", *extra)
    assert live.returncode == 0, live.stderr[-2000:]
    (key,) = [p for p in (teacher_dir / "logit_cache").glob("*/key.json") if '"topk": 3' in p.read_text()]
    (path,) = key.parent.glob("epoch_0000_*.safetensors")
    stored = load_file(str(path))
    assert set(stored) == {"values", "indices"}  # 16 steps x 32 views x (3 classes, 4 bytes each + 2 for the rest)
    assert stored["values"].shape == (16, 32, 4) and stored["values"].dtype == torch.float16
    assert stored["indices"].dtype == torch.int16 and int(stored["indices"].max()) < 10
    replay = distilled(tmp_path, teacher_dir, "replay_k3", *extra)
    assert replay.returncode == 0, replay.stderr[-2000:]
    a, b = (load_file(str(tmp_path / n / "student.safetensors")) for n in ("live_k3", "replay_k3"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_topk_larger_than_the_classes_is_one_line(tmp_path, teacher_dir):
    before = sorted((teacher_dir / "logit_cache").iterdir()) if (teacher_dir / "logit_cache").exists() else []
    res = distilled(tmp_path, teacher_dir, "too_many", "distill.cache_topk=11")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("error: distill.cache_topk=11 is larger than the dataset's 10 classes")
    assert not (tmp_path / "too_many").exists()  # nothing written: no run folder, no cache folder
    assert (sorted((teacher_dir / "logit_cache").iterdir()) if before else []) == before


def test_device_views_of_a_set_with_its_own_mean_are_keyed_apart():
    """The device path fills RandAugment's geometric ops with the split's mean (it used ImageNet's): a grey
    set's device views changed, so its cache key changes and an old cache is never replayed; an
    ImageNet-statistics set's views did not, and its key is the one it had."""
    from distill.recipe import load_config
    from distill.train.cache import cache_key
    rrc = ["data.crop=rrc", "data.color_jitter=0", "data.auto_augment=rand-m9-mstd0.5-inc1"]
    device = load_config("recipes/fashion_mnist/plain_tiny.yaml", rrc + ["data.augment_on=device"])
    workers = load_config("recipes/fashion_mnist/plain_tiny.yaml", rrc)
    grey, imagenet = (0.286,), (0.485, 0.456, 0.406)
    assert cache_key(device, 1, "no", grey) != cache_key(device, 1, "no", imagenet)
    assert cache_key(workers, 1, "no", grey) == cache_key(workers, 1, "no", imagenet)
    assert "device_fill" not in cache_key(device, 1, "no", imagenet)
