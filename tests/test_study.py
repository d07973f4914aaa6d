import json
import math
import warnings
from pathlib import Path

import pytest

from conftest import PLAIN, ROOT
from distill.cli import main
from distill.config import to_yaml
from distill.recipe import load_config
from distill.errors import ConfigError
from distill.report import plots, stats
from distill.report.compare import group, load_runs, variant_rows, write_report
from distill.report.baselines import study_baselines
from distill.report.study import load_study, plan, run_study


# t quantiles written out (any t-table, or R's qt(0.975, df)): the code under test computes them with scipy
T975_2, T975_4 = 4.302652730, 2.776445105


def test_mean_std_and_intervals_by_hand():
    xs = [70.0, 72.0, 74.0]
    assert stats.mean(xs) == 72.0
    assert stats.std(xs) == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    a, b = [80.0, 82.0, 84.0], [70.0, 72.0, 74.0]
    d, half = stats.diff_ci(a, b)
    # Welch: se = sqrt(4/3 + 4/3); df = (8/3)^2 / ((4/3)^2/2 * 2) = 4 -> t_{0.975, 4}
    assert d == 10.0 and half == pytest.approx(T975_4 * math.sqrt(8 / 3), rel=1e-6)
    assert stats.std([5.0]) == 0.0
    assert stats.diff_ci([1.0], b)[1] == math.inf and stats.diff_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 0.0)


def test_paired_interval_by_hand():
    a, b = [80.0, 83.0, 84.0], [70.0, 72.0, 74.0]  # per-seed differences 10, 11, 10
    d, half = stats.paired_diff_ci(a, b)
    # mean 31/3; deviations -1/3, 2/3, -1/3 -> sd = sqrt((1/9 + 4/9 + 1/9) / 2) = sqrt(1/3); se = sd / sqrt(3) = 1/3
    assert d == pytest.approx(31 / 3) and half == pytest.approx(T975_2 / 3, rel=1e-6)
    assert half < stats.diff_ci(a, b)[1] / 2  # the seeds' shared noise cancels: far narrower than Welch's
    assert stats.paired_diff_ci([1.0, 2.0], [0.0, 1.0]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="one b per a"):
        stats.paired_diff_ci(a, b[:2])


def fake_run(folder: Path, name: str, final: float, student="distill_vit_tiny", distill="none", teacher=None,
             seed=0, aug_seed="no config.yaml"):
    d = folder / name
    d.mkdir(parents=True)
    if aug_seed != "no config.yaml":
        (d / "config.yaml").write_text(f"seed: {seed}\ndata:\n  aug_seed: {'null' if aug_seed is None else aug_seed}\n")
    summary = {"name": name, "best_top1": final + 1, "final_top1": final, "params": 3.2e6, "gflops": 0.108,
               "train_img_per_s": 390.0, "wall_s": 100.0, "student": student, "distill_type": distill,
               "teacher": teacher, "seed": seed, "world_size": 1, "git_commit": "abc", "torch": "2", "timm": "1",
               "accelerate": "1", "hardware": "cpu"}
    if distill != "none":
        summary["teacher_agreement"] = 90.0
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "top1": final - 2 + e}) + "\n" for e in range(3)))
    return d


def test_report_groups_seeds_and_compares_with_plain(tmp_path):
    dirs = [fake_run(tmp_path, f"plain_s{s}", v) for s, v in enumerate([70.0, 72.0, 74.0])]
    dirs += [fake_run(tmp_path, f"hard_s{s}", v, distill="hard", teacher="resnet18") for s, v in enumerate([80, 82, 84])]
    rows = {r["variant"]: r for r in variant_rows(group(load_runs(dirs)))}
    assert rows["plain"]["n"] == 3 and rows["plain"]["final_mean"] == 72.0 and rows["plain"]["final_std"] == 2.0
    assert rows["hard"]["baseline"] == "plain" and rows["hard"]["delta"] == 10.0
    assert rows["hard"]["delta_ci"] == pytest.approx(T975_4 * math.sqrt(8 / 3), rel=1e-6)
    assert rows["hard"]["test"] == "Welch t"  # every fake run says seed 0: nothing to pair
    report = write_report(load_runs(dirs), tmp_path / "report")
    text = report.read_text()
    assert "| +10.00 ± 4.53 | Welch t |" in text and "72.00 ± 2.00" in text
    for png in ("top1_per_epoch.png", "plain_vs_distilled.png", "gain_vs_plain.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


def test_runs_kept_as_their_records_alone_plot_their_final_evaluation(tmp_path, monkeypatch):
    # docs/ keeps a study's runs as summary.json and config.yaml: the curve is the last evaluation, from summary.json
    dirs = [fake_run(tmp_path, f"plain_s{s}", v, seed=s) for s, v in enumerate([70.0, 74.0])]
    for d in dirs:
        (d / "metrics.jsonl").unlink()
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "epochs": 2, "epoch_images": 100}))
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: an empty plot, and matplotlib's "No artists with labels"
        plots.curves(group(load_runs(dirs)), tmp_path)
    (line,) = figures[0].axes[0].get_lines()
    assert list(line.get_xdata()) == [200] and list(line.get_ydata()) == [72.0] and line.get_label() == "plain (n=2)"


def test_one_seed_each_gives_the_difference_without_an_interval(tmp_path):
    dirs = [fake_run(tmp_path, "plain", 82.32), fake_run(tmp_path, "hard", 82.90, distill="hard", teacher="resnet10t")]
    text = write_report(load_runs(dirs), tmp_path / "report").read_text()
    assert "| +0.58 (one seed: no interval) | - |" in text and "inf" not in text


@pytest.mark.parametrize("plain_aug_seed,test", [(0, "paired t"), (None, "Welch t")])
def test_report_pairs_runs_by_seed_on_the_same_views(tmp_path, plain_aug_seed, test):
    """Seeds 0-2 in both variants; the distilled runs fix data.aug_seed=0. The plain runs pair with them when
    they fix it too; with aug_seed unset each plain run's views follow its seed, so they do not pair."""
    dirs = [fake_run(tmp_path, f"plain_s{s}", v, seed=s, aug_seed=plain_aug_seed) for s, v in enumerate([70, 72, 74])]
    dirs += [fake_run(tmp_path, f"kd_s{s}", v, distill="kd", teacher="resnet18", seed=s, aug_seed=0)
             for s, v in zip([2, 0, 1], [84, 80, 83])]  # listed out of seed order: pairing goes by seed
    rows = {r["variant"]: r for r in variant_rows(group(load_runs(dirs)))}
    assert rows["kd"]["test"] == test and rows["kd"]["delta"] == pytest.approx(31 / 3)
    if test == "paired t":  # differences 10, 11, 10: half-width t_{0.975, 2} / 3, as in test_paired_interval_by_hand
        assert rows["kd"]["delta_ci"] == pytest.approx(T975_2 / 3, rel=1e-6)
        assert "| +10.33 ± 1.43 | paired t |" in write_report(load_runs(dirs), tmp_path / "r").read_text()
    else:
        assert rows["kd"]["delta_ci"] == pytest.approx(stats.diff_ci([80, 83, 84], [70, 72, 74])[1])


def test_fewer_seeds_pair_with_the_baselines_same_seeds(tmp_path):
    """A variant on seeds 0-2 against a baseline on seeds 0-4: paired on 0-2, the other baseline runs left out."""
    dirs = [fake_run(tmp_path, f"plain_s{s}", v, seed=s, aug_seed=0) for s, v in enumerate([70, 72, 74, 90, 50])]
    dirs += [fake_run(tmp_path, f"dkd_s{s}", v, distill="dkd", teacher="resnet18", seed=s, aug_seed=0)
             for s, v in enumerate([80, 83, 84])]
    rows = {r["variant"]: r for r in variant_rows(group(load_runs(dirs)))}
    assert rows["dkd"]["test"] == "paired t, 3 pairs" and rows["dkd"]["delta"] == pytest.approx(31 / 3)
    assert rows["dkd"]["delta_ci"] == pytest.approx(T975_2 / 3, rel=1e-6)
    extra = fake_run(tmp_path, "dkd_s7", 85, distill="dkd", teacher="resnet18", seed=7, aug_seed=0)  # no plain seed 7
    rows = {r["variant"]: r for r in variant_rows(group(load_runs([*dirs, extra])))}
    assert rows["dkd"]["test"] == "Welch t"


def write_study(tmp_path: Path, runs: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path}/out\nseeds: [0, 1]\nruns:\n{runs}")
    return path


def test_completed_runs_are_skipped(tmp_path, capsys):
    recipe = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
    path = write_study(tmp_path, f"  plain:\n    recipe: {recipe}\n")
    for seed, v in [(0, 70.0), (1, 72.0)]:
        fake_run(tmp_path / "out" / "s", f"plain_s{seed}", v)
    assert run_study(path) == 0  # nothing to train: a launched run would fail on the fake folders
    out = capsys.readouterr().out
    assert out.count("complete (skipped)") == 2 and (tmp_path / "out" / "s" / "report" / "report.md").exists()


@pytest.mark.slow  # the study launches `python -m distill train` for the failing run: ~6 s of imports
def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    recipe = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
    bad = ROOT / "recipes/fashion_mnist/hard_tiny.yaml"
    path = write_study(tmp_path, f"  teacher:\n    recipe: {recipe}\n    seeds: [0]\n"
                                 f"    overrides: [data.name=cifar10, data.root={tmp_path}/none, data.download=false]\n"
                                 f"  hard:\n    recipe: {bad}\n    teacher: teacher\n"
                                 f"  plain:\n    recipe: {recipe}\n")
    for seed in (0, 1):
        fake_run(tmp_path / "out" / "s", f"plain_s{seed}", 70.0)
    assert run_study(path) == 1
    captured = capsys.readouterr()
    assert "teacher seed 0: FAILED (exit 2)" in captured.out
    assert captured.out.count("teacher_s0, which it needs, is not complete") == 2
    assert "plain seed 1: complete (skipped)" in captured.out  # the others still went on


def test_plan_wires_teacher_seeds_and_overrides(tmp_path):
    jobs = plan(ROOT / "recipes/studies/fashion_mnist_cpu.yaml", ["train.epochs=1"])
    names = [j.run_dir.name for j in jobs]
    variants = ("plain", "plain_nols", "hard", "soft", "kd", "kd_standardized", "dkd", "dist", "feature", "crd")
    assert names == ["teacher_s0", *[f"{v}_s{s}" for v in variants for s in range(5)], "teacher_vit_s0",
                     *[f"vitkd_s{s}" for s in range(5)]]
    hard = jobs[11]
    assert f"teacher.checkpoint={jobs[0].run_dir}" in hard.cmd and "seed=0" in hard.cmd
    assert hard.cmd.index("train.epochs=1") > hard.cmd.index("train.epochs=8")  # the command line wins
    assert jobs[0].cmd.index("train.epochs=3") > jobs[0].cmd.index("train.epochs=8")  # the run's own beat the study's


@pytest.mark.parametrize("study", sorted((ROOT / "recipes/studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_loads(study):
    assert plan(study)  # loads the study (load_study) and expands every run


def test_quickstart_trains_its_students_as_the_cpu_study_does():
    """scripts/quickstart.sh is seed 0 of recipes/studies/fashion_mnist_cpu.yaml, its settings written out
    for a shell script: the two copies must not drift, or the quickstart's numbers stop matching the study's.
    How often a run evaluates, checkpoints and logs may differ: it does not change the weights."""
    import re
    import shlex

    script = (ROOT / "scripts/quickstart.sh").read_text()
    words = [w for name in ("short", "student") for w in shlex.split(re.search(rf'^{name}="(.*?)"', script,
                                                                                re.S | re.M).group(1))]
    quickstart = dict(w.split("=", 1) for w in words if not w.startswith(("output_dir=", "$short")))
    study = dict(o.split("=", 1) for o in load_study(ROOT / "recipes/studies/fashion_mnist_cpu.yaml").overrides)
    cadence = ("train.eval_every", "train.checkpoint_every", "train.log_every")
    assert {k: v for k, v in quickstart.items() if k not in cadence} == \
        {k: v for k, v in study.items() if k not in cadence}
    assert set(quickstart) == set(study)


def one_error_line(status: int, capsys) -> str:
    """The line `distill study` printed, run in-process (`main` returns the exit status; a traceback
    would escape it as an exception): a subprocess would only add ~6 s of imports."""
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


def test_runs_made_with_other_settings_are_refused_not_reported(tmp_path, capsys, monkeypatch):
    """Issue 23: a re-run with train.epochs=2 counted every 1-epoch run as complete and reported them."""
    path = write_study(tmp_path, f"  plain:\n    recipe: {ROOT / PLAIN}\n")
    for job in plan(path, ["train.epochs=1"]):  # finished runs, as `distill train` leaves them
        d = fake_run(job.run_dir.parent, job.run_dir.name, 70.0, seed=job.seed, aug_seed=job.seed)
        (d / "config.yaml").write_text(to_yaml(load_config(job.recipe, job.settings)))
        (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()), "epochs": 1}))
    assert run_study(path, ["train.epochs=1"]) == 0  # the settings they were made with: counted
    (tmp_path / "out" / "s" / "report" / "report.md").unlink()
    capsys.readouterr()  # the report above
    line = one_error_line(main(["study", str(path), "train.epochs=2"]), capsys)
    assert line == (f"error: study {path}: run {tmp_path}/out/s/plain_s0 was made with train.epochs=1 (and 1 more "
                    "run of the study), but the study now asks train.epochs=2, and a study only reports runs made "
                    f"with its settings; give the study another name: in {path}, or delete the runs made with other "
                    "settings")
    from distill.report import estimate  # the dry run's hours are not under test: no timed step

    monkeypatch.setattr(estimate, "_seconds_per_image", lambda *a: 1e-3)
    dry = main(["study", str(path), "train.epochs=2", "--dry-run"])  # the dry run says it too, after its table
    out, err = capsys.readouterr()
    assert dry == 2 and "total (" in out and err.strip().splitlines()[-1] == line
    from distill.report import calibrate  # --calibrate refuses before its timed runs and its estimate.json

    monkeypatch.setattr(calibrate, "time_run", lambda *a: pytest.fail("timed a run of a study that will not start"))
    assert main(["study", str(path), "train.epochs=2", "--dry-run", "--calibrate"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert not (tmp_path / "out/s" / calibrate.ESTIMATE).exists()
    with pytest.raises(ConfigError, match=r"plain_s0 was made with train.lr=0.0003 .*asks train.lr=0.002"):
        run_study(path, ["train.epochs=1", "train.lr=0.002"])
    assert not (tmp_path / "out" / "s" / "report" / "report.md").exists()


@pytest.mark.parametrize("teachers,message", [
    ({"a": "b", "b": "a"}, "the teacher: references form a cycle, a -> b -> a (each run's teacher after its arrow)"),
    ({"a": "a"}, "form a cycle, a -> a"),
    ({"a": "c"}, "runs.a.teacher='c' names no variant of the study (a)")])
def test_teacher_cycles_and_unknown_teachers_are_refused_before_any_run(tmp_path, teachers, message, capsys):
    """Issue 23: a study whose runs were each other's teachers exited 1 with "not complete"."""
    path = write_study(tmp_path, "".join(f"  {v}:\n    recipe: {ROOT / PLAIN}\n    teacher: {t}\n"
                                         for v, t in teachers.items()))
    line = one_error_line(main(["study", str(path)]), capsys)
    assert line.startswith(f"error: study {path}: ") and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_teacher_listed_after_its_students_runs_first(tmp_path):
    recipe = ROOT / PLAIN
    path = write_study(tmp_path, f"  kd:\n    recipe: {recipe}\n    teacher: t\n  t:\n    recipe: {recipe}\n")
    assert [j.run_dir.name for j in plan(path)] == ["t_s0", "t_s1", "kd_s0", "kd_s1"]


def test_output_dir_on_the_command_line_moves_the_study(tmp_path):
    """`distill study FILE output_dir=DIR`: the runs go to DIR/<study name>/ (the study's own output_dir
    was appended after the user's and won), and no run is handed an output_dir of its own."""
    path = write_study(tmp_path, "  plain: {recipe: %s}\n" % (ROOT / "recipes/fashion_mnist/plain_tiny.yaml"))
    jobs = plan(path, [f"output_dir={tmp_path}/mine", "train.epochs=1"])
    assert [j.run_dir for j in jobs] == [tmp_path / "mine" / "s" / f"plain_s{s}" for s in (0, 1)]
    assert [a for a in jobs[0].cmd if a.startswith("output_dir=")] == [f"output_dir={tmp_path / 'mine' / 's'}"]


@pytest.mark.parametrize("override, words", [
    ("name=mine", "name=mine on the command line cannot apply: the study names each run"),
    ("seed=7", "seed=7 on the command line cannot apply: each run's seed comes from the study's seeds:"),
    ("train.resume=none", "the study resumes every unfinished run itself"),
])
def test_keys_the_study_sets_itself_are_refused_in_one_line(tmp_path, override, words, capsys):
    path = write_study(tmp_path, "  plain: {recipe: %s}\n" % (ROOT / "recipes/fashion_mnist/plain_tiny.yaml"))
    line = one_error_line(main(["study", str(path), override, "--dry-run"]), capsys)
    assert words in line, line
    assert not (tmp_path / "out").exists()


def like_with_like_study(tmp_path: Path, kd_extra: str = "", plain_nols: bool = False) -> Path:
    """plain and kd (kd_tiny.yaml: plain cross-entropy, where plain_tiny.yaml smooths labels by 0.1), the
    teacher another student (no baseline candidate); every run already finished, config.yaml and all."""
    fm = ROOT / "recipes/fashion_mnist"
    nols = f"  plain_nols:\n    recipe: {ROOT / PLAIN}\n    overrides: [data.label_smoothing=0]\n" if plain_nols else ""
    path = write_study(tmp_path, f"  t:\n    recipe: {ROOT / PLAIN}\n    seeds: [0]\n    overrides: [student.model=resnet10t]\n"
                                 f"  plain:\n    recipe: {ROOT / PLAIN}\n{nols}"
                                 f"  kd:\n    recipe: {fm / 'kd_tiny.yaml'}\n    teacher: t\n{kd_extra}")
    for job in plan(path):
        d = fake_run(job.run_dir.parent, job.run_dir.name, 80.0 + job.seed + (job.variant == "kd"), seed=job.seed,
                     aug_seed=0, distill="kd" if job.variant == "kd" else "none",
                     student="resnet10t" if job.variant == "t" else "distill_vit_tiny")
        (d / "config.yaml").write_text(to_yaml(load_config(job.recipe, job.settings)))
    return path


def test_a_variant_that_differs_from_its_baseline_outside_the_methods_keys_is_refused(tmp_path, capsys):
    """Issue 31: kd (no label smoothing) was compared with plain (smoothing 0.1): its gain measured both."""
    path = like_with_like_study(tmp_path)
    line = one_error_line(main(["study", str(path)]), capsys)
    assert line == (f"error: study {path}: kd differs from its baseline plain in data.label_smoothing (0.0 against 0.1), "
                    "not a key of distill.type=kd, so its gain would measure that too; pair it with a plain variant "
                    "that shares the setting (runs.kd.baseline: <variant>), or declare it "
                    "(runs.kd.declared_differences: [data.label_smoothing])")
    assert not (tmp_path / "out" / "s" / "report").exists()


def test_a_declared_difference_is_run_and_listed_beside_the_gain(tmp_path):
    path = like_with_like_study(tmp_path, "    declared_differences: [data.label_smoothing]\n")
    assert run_study(path) == 0
    row = next(ln for ln in (tmp_path / "out/s/report/report.md").read_text().splitlines() if ln.startswith("| kd |"))
    assert "| plain | +1.00 ± 0.00 | paired t | data.label_smoothing 0.0 vs 0.1 (declared) |" in row


@pytest.mark.parametrize("named", [True, False])
def test_a_label_term_matched_baseline_pairs_with_kd(tmp_path, named):
    """plain_nols shares kd's label term: named as kd's baseline, or found as the one like kd, it is the
    baseline, and the report lists no other difference."""
    path = like_with_like_study(tmp_path, "    baseline: plain_nols\n" if named else "", plain_nols=True)
    assert run_study(path) == 0
    row = next(ln for ln in (tmp_path / "out/s/report/report.md").read_text().splitlines() if ln.startswith("| kd |"))
    assert "| plain_nols | +1.00 ± 0.00 | paired t | - |" in row


@pytest.mark.parametrize("extra,message", [
    ("    baseline: nope\n", "runs.kd.baseline='nope' is not a plain variant of the study (distill.type=none: t, plain)"),
    ("    declared_differences: [data.smoothing]\n", "runs.kd.declared_differences names 'data.smoothing', which is "
                                                      "not a config key")])
def test_a_wrong_baseline_or_declaration_is_refused(tmp_path, extra, message, capsys):
    path = like_with_like_study(tmp_path, extra)
    assert message in one_error_line(main(["study", str(path)]), capsys)


def test_the_example_study_pairs_each_method_with_its_label_term():
    """kd, kd_standardized, dkd and crd learn their labels with plain cross-entropy: their baseline is
    plain_nols; the others smooth labels by 0.1, as plain does. Any other difference would be refused."""
    path = ROOT / "recipes/studies/fashion_mnist_cpu.yaml"
    chosen = study_baselines(load_study(path), plan(path), path)
    assert chosen == {"hard": "plain", "soft": "plain", "kd": "plain_nols", "kd_standardized": "plain_nols",
                      "dkd": "plain_nols", "dist": "plain", "feature": "plain", "crd": "plain_nols", "vitkd": "plain"}


@pytest.mark.parametrize("plain_nols", [False, True])
def test_compare_on_run_folders_names_the_baseline_and_flags_other_differences(tmp_path, plain_nols):
    """`distill compare` has no study to declare anything: it pairs kd with the plain variant like it
    where there is one, and otherwise lists the difference beside the gain as not declared."""
    path = like_with_like_study(tmp_path, plain_nols=plain_nols)
    rows = {r["variant"]: r for r in variant_rows(group(load_runs([j.run_dir for j in plan(path)])))}
    if plain_nols:
        assert rows["kd"]["baseline"] == "plain_nols" and rows["kd"]["also_differs"] == "-"
    else:
        assert rows["kd"]["baseline"] == "plain"
        assert rows["kd"]["also_differs"] == "data.label_smoothing 0.0 vs 0.1 (NOT declared)"


def test_a_study_file_that_is_not_yaml_is_refused_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\noverrides: [data.train_subset=640, train.log_with=[]]\n")
    with pytest.raises(ConfigError, match=r"s.yaml: line 2, column \d+: not valid YAML .*quote an item"):
        load_study(path)


def test_a_run_written_before_a_methods_keys_existed_differs_in_none_of_them(tmp_path):
    """The report reads each run's config.yaml; one written before a method was added holds none of its
    keys, which are their defaults there, not a difference (the example study's plain_nols, written
    before ViTKD, against crd)."""
    import yaml

    from distill.config import to_yaml
    from distill.recipe import load_config
    from distill.report.baselines import differences, saved_config

    text = to_yaml(load_config(str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")))
    old = yaml.safe_load(text)
    del old["distill"]["vitkd_alpha"], old["distill"]["crd_beta"]
    for name, body in (("new", text), ("old", yaml.safe_dump(old))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(body)
    assert differences(saved_config(tmp_path / "new"), saved_config(tmp_path / "old")) == {}


def test_a_stop_request_ends_the_study_even_when_its_run_finished_meanwhile(tmp_path, monkeypatch, capsys):
    """SIGTERM arrived in a run's last step and the run completed: the study still starts no other run.
    (Real runs stopped mid-way: test_faults.py::test_a_stopped_study_lets_its_run_checkpoint_and_starts_no_other.)"""
    import signal

    from distill.report import study as study_mod

    started = []

    def finished_anyway(cmd):
        name = next(c.split("=", 1)[1] for c in cmd if c.startswith("name="))
        started.append(name)
        fake_run(tmp_path / "out" / "s", name, 70.0)
        return 0, signal.SIGTERM

    monkeypatch.setattr(study_mod, "run_passing_stops", finished_anyway)
    assert run_study(write_study(tmp_path, f"  plain:\n    recipe: {ROOT / PLAIN}\n")) == 0
    assert started == ["plain_s0"]
    assert f"== study: stopped by SIGTERM in {tmp_path / 'out/s/plain_s0'} (complete)" in capsys.readouterr().err
