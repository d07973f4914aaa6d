"""A scaling study's budgets in FLOPs, planned as one long wsd run plus cooldown forks, and the
fork-vs-cosine table, checked by hand without training."""
import json

import pytest
import yaml

from conftest import ROOT, needs_fmnist
from distill.errors import ConfigError
from distill.report.ladder import fork_check, long_run_overrides, plan_size, saved_line
from distill.runs.checkpoint import checkpoint_step
from distill.report.study import load_study, plan


def test_budgets_round_to_whole_epochs_and_fork_at_the_last_checkpoint_before_the_cooldown():
    """1e9 FLOPs an epoch (1e6 per image x 1,000 images), 10 updates an epoch, a cooldown of 0.25: a
    16-epoch run starts its cooldown at update 120, an 8-epoch one at 60 (epoch 6), a 4-epoch at 30
    (epoch 3); with 0.2, 8 epochs start theirs at update 64, inside epoch 7, so the fork starts at 6."""
    rungs = plan_size([4e9, 16.4e9, 8e9], 1e6, 1000, 10, 1, 0.25, "w")
    assert [(r.epochs, r.flops, r.fork_epoch, r.fork_step) for r in rungs] == [
        (16, 16e9, 0, 0), (8, 8e9, 6, 60), (4, 4e9, 3, 30)]
    assert [r.fork_step for r in plan_size([16e9, 8e9], 1e6, 1000, 10, 1, 0.2, "w")] == [0, 60]
    # a checkpoint's step counts micro-batches: with 2 of them an update, the same epochs are twice the steps
    assert [r.fork_step for r in plan_size([16e9, 8e9], 1e6, 1000, 20, 2, 0.25, "w")] == [0, 120]
    # a 1-epoch budget cools down inside its first epoch: no checkpoint before it, so it trains from scratch
    assert plan_size([4e9, 1e9], 1e6, 1000, 10, 1, 0.25, "w")[1].fork_step == 0


def test_budgets_that_round_to_the_same_epochs_are_refused():
    with pytest.raises(ConfigError, match="both round to 4 epochs"):
        plan_size([4e9, 4.2e9], 1e6, 1000, 10, 1, 0.25, "size w64")


def test_the_long_run_keeps_a_checkpoint_at_every_fork():
    """Forks at epochs 6 and 3 of 16: a checkpoint every 3 epochs (3, 6, 9, 12, 15 and the last), all kept."""
    rungs = plan_size([16e9, 8e9, 4e9], 1e6, 1000, 10, 1, 0.25, "w")
    assert long_run_overrides(rungs) == ["train.checkpoint_every=3", "train.keep_checkpoints=6"]
    assert checkpoint_step("/r/plain_e16_s0/checkpoints/step_000000060") == 60
    assert checkpoint_step("auto") == checkpoint_step("") == 0


def _study(tmp_path, scaling):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ladder", "seeds": [0, 1], "output_dir": str(tmp_path / "runs"),
        "overrides": ["data.train_subset=5000", "train.cooldown=0.25", "train.checkpoint_every=1000"],
        "scaling": {"sizes": {"w64d2": ["student.embed_dim=64", "student.depth=2", "student.num_heads=2"],
                              "w96d3": ["student.embed_dim=96", "student.depth=3", "student.num_heads=3"]},
                    "methods": {"plain": {"recipe": str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")}},
                    **scaling}}))
    return path


def test_a_budgets_study_plans_long_runs_then_forks_from_their_checkpoints(tmp_path):
    """Each size's budgets become epochs by its own FLOPs per image; per seed the long run goes first,
    keeps its checkpoints, and every smaller budget forks from that seed's long run at its cooldown start."""
    from distill.report.estimate import size_shape
    from distill.recipe import load_config

    cfg = load_config(str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml"),
                      ["data.train_subset=5000", "student.embed_dim=64", "student.depth=2", "student.num_heads=2"])
    image_flops, epoch_images, steps, _ = size_shape(cfg, load_study(_study(tmp_path, {"epochs": [1]})).scaling)
    assert (epoch_images, steps) == (4992, 39)  # 39 batches of 128; the partial one is dropped
    budgets = [e * image_flops * epoch_images for e in (16, 8, 4)]  # w64d2: exactly 16, 8 and 4 epochs
    jobs = plan(_study(tmp_path, {"budgets": budgets}))
    small = [j for j in jobs if "w64d2" in j.variant]
    assert [j.run_dir.name for j in small] == ["plain_w64d2_e16_s0", "plain_w64d2_e16_s1", "plain_w64d2_e8_s0",
                                               "plain_w64d2_e8_s1", "plain_w64d2_e4_s0", "plain_w64d2_e4_s1"]
    setting = {j.run_dir.name: dict(s.split("=", 1) for s in j.settings) for j in jobs}
    long = setting["plain_w64d2_e16_s1"]
    assert (long["train.schedule"], long["train.resume"], long["train.epochs"]) == ("wsd", "auto", "16")
    assert (long["train.checkpoint_every"], long["train.keep_checkpoints"]) == ("3", "6")  # forks at epochs 6, 3
    # 8 epochs cool down from update 234 (epoch 6), 4 epochs from update 117 (epoch 3)
    for name, step in (("plain_w64d2_e8_s1", 234), ("plain_w64d2_e4_s1", 117)):
        assert setting[name]["train.resume"] == str(tmp_path / f"runs/ladder/plain_w64d2_e16_s1/checkpoints/step_{step:09d}")
        assert setting[name]["train.schedule"] == "wsd" and setting[name]["train.epochs"] == name[-4]
    assert next(j for j in jobs if j.run_dir.name == "plain_w64d2_e4_s1").needs == tmp_path / "runs/ladder/plain_w64d2_e16_s1"
    # w96d3 costs 3.3 times the FLOPs an image: the same budgets are 5, 2 and 1 epochs; the last cools down
    # inside its first epoch, so it trains from scratch; w96d3 is the held-out rung
    big = {j.run_dir.name: j for j in jobs if "w96d3" in j.variant}
    assert list(big) == [f"plain_w96d3_e{e}_s{s}" for e in (5, 2, 1) for s in (0, 1)]
    assert all(j.holdout for j in big.values()) and not any(j.holdout for j in small)
    assert setting["plain_w96d3_e1_s0"]["train.resume"] == "auto" and big["plain_w96d3_e1_s0"].needs is None
    # a finished fork resumes `auto` (its own folder), so deleting the long run's checkpoints breaks nothing
    done = tmp_path / "runs/ladder/plain_w64d2_e8_s1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    again = {j.run_dir.name: j for j in plan(_study(tmp_path, {"budgets": budgets}))}
    assert "train.resume=auto" in again["plain_w64d2_e8_s1"].settings
    assert "train.resume=auto" not in again["plain_w64d2_e8_s0"].settings
    # the dry run counts a fork's images from its checkpoint on, and every run's from scratch beside them
    from distill.report.estimate import estimate

    rows = {r["run"]: r for r in estimate(jobs, load_study(_study(tmp_path, {"budgets": budgets})))}
    assert [(rows[n]["images"], rows[n]["images_scratch"]) for n in ("plain_w64d2_e16_s0", "plain_w64d2_e8_s0",
            "plain_w64d2_e4_s0", "plain_w96d3_e1_s0")] == [(16 * 4992, 16 * 4992), (2 * 4992, 8 * 4992),
                                                           (4992, 4 * 4992), (4992, 4992)]


def test_budgets_and_epochs_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="gives epochs and budgets"):
        load_study(_study(tmp_path, {"budgets": [1e12], "epochs": [4]}))


def test_the_dry_run_counts_a_fork_only_from_its_checkpoint():
    rows = [{"images": 8000}, {"images": 1000, "images_scratch": 4000}, {"images": 1000, "images_scratch": 2000}]
    assert saved_line(rows) == "2 forks: the study trains 10,000 images, 14,000 from scratch would: 28.6% saved"
    assert saved_line([{"images": 10, "images_scratch": 10}]) == "no forks: every run trains from scratch"


def _run(folder, name, schedule, epochs, seed, top1, forked_at=0):
    d = folder / name
    d.mkdir(parents=True)
    summary = {"name": name, "epochs": epochs, "seed": seed, "final_top1": top1, "images": epochs * 100,
               "epoch_images": 100, "global_batch": 50, "wall_s": 1.0}
    if forked_at:
        summary["forked_from"] = str(folder / f"long_s{seed}/checkpoints/step_{forked_at:09d}")
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"schedule": schedule, "grad_accum_steps": 1}}))


def test_fork_check_pairs_each_fork_with_the_cosine_run_of_its_seed(tmp_path):
    """Forks at epoch 3 of 4-epoch budgets (2 steps of 50 images an epoch, so step 6), 3 seeds: the paired
    differences 1, 2 and 3 have mean 2 and a 95% interval 2 +- t(0.975, 2) x 1 / sqrt(3) = 2 +- 2.484."""
    for s, (f, c) in enumerate([(71.0, 70.0), (72.0, 70.0), (74.0, 71.0)]):
        _run(tmp_path, f"long_s{s}", "wsd", 8, s, 80.0)
        _run(tmp_path, f"fork_s{s}", "wsd", 4, s, f, forked_at=6)
        _run(tmp_path, f"cos_s{s}", "cosine", 4, s, c)
    (b,) = fork_check(tmp_path)["budgets"]
    assert (b["epochs"], b["seeds"], b["start_epoch"]) == (4, [0, 1, 2], 3)
    assert b["diff"] == pytest.approx(2.0) and b["half"] == pytest.approx(2.4841, abs=1e-3)
    result = fork_check(tmp_path)
    # long runs 3 x 800 images, forks 3 x 100 (epoch 3 to 4); from scratch the forks would be 3 x 400
    assert (result["images_ladder"], result["images_scratch"]) == (2700, 3600)


@needs_fmnist
@pytest.mark.slow
def test_a_budgets_ladder_trains_its_long_runs_and_forks(tmp_path):
    """The smallest size of a shrunk budgets study (256 images, 4 steps an epoch; command-line overrides
    reach the planning): the 16-epoch wsd run keeps a checkpoint every 3 epochs, the 8- and 4-epoch budgets
    fork from them (epochs 6 and 3) and finish as forks of that run, with the full budget's FLOPs."""
    from distill.report.estimate import size_shape
    from distill.report.study import _run
    from distill.recipe import load_config

    tiny = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=64", "train.lr_base_batch=64",
            "train.mixed_precision=no", "train.log_with=[]"]
    cfg = load_config(str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml"),
                      [*tiny, "student.embed_dim=64", "student.depth=2", "student.num_heads=2"])
    image_flops, epoch_images, _, _ = size_shape(cfg, load_study(_study(tmp_path, {"epochs": [1]})).scaling)
    path = _study(tmp_path, {"budgets": [e * image_flops * epoch_images for e in (16, 8, 4)]})
    jobs = [j for j in plan(path, tiny) if "w64d2" in j.variant and j.seed == 0]
    status = {}
    for job in jobs:
        _run(job, status)
    assert all(v == "ran" for v in status.values()), status
    long = jobs[0].run_dir
    assert [c.name for c in sorted((long / "checkpoints").glob("step_*"))] == [
        f"step_{4 * e:09d}" for e in (3, 6, 9, 12, 15, 16)]
    for job, epoch in zip(jobs[1:], (6, 3)):
        summary = json.loads((job.run_dir / "summary.json").read_text())
        assert summary["forked_from"] == str(long / "checkpoints" / f"step_{4 * epoch:09d}")
        assert summary["flops"] == pytest.approx(image_flops * epoch_images * int(job.variant[-1]))


def test_a_fork_of_no_earlier_variant_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    recipe = str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")
    for fork, ok in (("long:39", True), ("later:39", False), ("long", False), ("long:x", False)):
        path.write_text(yaml.safe_dump({"name": "f", "runs": {"long": {"recipe": recipe},
                                                             "short": {"recipe": recipe, "fork": fork},
                                                             "later": {"recipe": recipe}}}, sort_keys=False))
        if ok:
            assert load_study(path).runs["short"].fork == fork
        else:
            with pytest.raises(ConfigError, match="is not <variant>:<step>"):
                load_study(path)


def test_a_budgets_study_finds_its_baselines_before_its_forks_checkpoints_exist(tmp_path):
    """`distill study` checks every pair like with like before any run starts, when no fork's checkpoint
    exists yet: the fork's train.resume is no config difference and must not stop the study."""
    from distill.report.baselines import study_baselines

    path = _study(tmp_path, {"budgets": [8.8e11, 2.2e11]})
    study = yaml.safe_load(path.read_text())
    study["scaling"]["methods"]["kd"] = {"recipe": str(ROOT / "recipes/fashion_mnist/kd_tiny.yaml"),
                                         "overrides": ["data.label_smoothing=0.1", "teacher.model=resnet10t"]}
    path.write_text(yaml.safe_dump(study))
    jobs = plan(path)
    assert any(not s.endswith("=auto") for j in jobs for s in j.settings if s.startswith("train.resume="))
    found = study_baselines(load_study(path), jobs, path)
    assert found["kd_w64d2_e4"] == "plain_w64d2_e4" and found["kd_w96d3_e5"] == "plain_w96d3_e5"
