"""docs/example_study/: the README's gain table is what the committed per-seed numbers give, each gain
paired with the baseline the study pairs it with; the label-term-matched baseline's committed runs are
the study's plain runs with unsmoothed labels and nothing else changed."""
import importlib.util

import yaml

from conftest import ROOT
from distill.config import flat_config, flat_dict
from distill.recipe import RunConfig, load_config
from distill.report.baselines import differences
from distill.report.study import plan

DOCS = ROOT / "docs/example_study"


def gains_script():
    spec = importlib.util.spec_from_file_location("example_study_gains", ROOT / "scripts/example_study_gains.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_gain_table_is_recomputed_from_the_committed_per_seed_numbers():
    g = gains_script()
    data = g.finals()
    assert {v: len(s) for v, s in data.items()} == {"teacher": 1, "teacher_rerun": 1, "teacher_vit": 1,
                                                    **{v: 5 for v in ("plain", "plain_nols", *g.BASELINE)}}
    readme = (DOCS / "README.md").read_text()
    missing = [line for line in g.table(data).splitlines() if line not in readme]
    assert not missing, "README.md disagrees with scripts/example_study_gains.py:\n" + "\n".join(missing)


def test_the_committed_plain_nols_runs_differ_from_plain_only_in_label_smoothing():
    jobs = {(j.variant, j.seed): j for j in plan(ROOT / "recipes/studies/fashion_mnist_cpu.yaml")}
    for seed in range(5):
        run = DOCS / "plain_nols" / f"plain_nols_s{seed}"
        saved = flat_dict(yaml.safe_load((run / "config.yaml").read_text()))
        plain = flat_config(load_config(jobs["plain", seed].recipe, jobs["plain", seed].settings))
        defaults = flat_config(RunConfig())  # keys added since the runs were made: their default, as a resume reads them
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        differs = {k for k in plain if plain[k] != saved.get(k)} - {"name", "output_dir"}
        assert differs == {"data.label_smoothing"} and saved["data.label_smoothing"] == 0.0, (seed, differs)


def saved_config(run) -> dict:
    """A committed run's config.yaml, flat, with the keys added since it ran at their defaults (as a resume reads them)."""
    saved = flat_dict(yaml.safe_load((run / "config.yaml").read_text()))
    return {**{k: v for k, v in flat_config(RunConfig()).items() if k not in saved}, **saved}


def test_the_committed_crd_and_vitkd_runs_differ_from_their_baselines_only_in_the_methods_keys():
    """CRD pairs with plain_nols (its label term is plain cross-entropy), ViTKD with plain; the plain rerun
    is the study's plain, seed for seed; and each run's config is what the study gives it today."""
    jobs = {(j.variant, j.seed): j for j in plan(ROOT / "recipes/studies/fashion_mnist_cpu.yaml")}
    new = DOCS / "crd_vitkd"
    for seed in range(5):
        pairs = [(new / f"crd_s{seed}", DOCS / "plain_nols" / f"plain_nols_s{seed}"), (new / f"vitkd_s{seed}", new / f"plain_s{seed}")]
        for run, base in pairs:
            assert differences(saved_config(run), saved_config(base)) == {}, (run, base)
        for variant in ("crd", "vitkd", "plain"):
            study = flat_config(load_config(jobs[variant, seed].recipe, jobs[variant, seed].settings))
            saved = saved_config(new / f"{variant}_s{seed}")
            assert {k for k in study if study[k] != saved.get(k)} - {"output_dir", "teacher.checkpoint"} == set(), (variant, seed)
