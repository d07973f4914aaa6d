"""What `distill study` refuses before any run (distill/report/study_checks.py) where its runs would not be
like with like: runs in another precision than its finished ones, runs whose teacher or fork source lost
what they start from; and a gain whose runs computed in other precisions, listed beside it."""
import json

import pytest

from conftest import PLAIN, ROOT
from distill.cli import main
from distill.config import to_yaml
from distill.errors import ConfigError
from distill.recipe import load_config
from distill.report.compare import group, load_runs, variant_rows
from distill.report.study import plan
from test_study import fake_run, one_error_line, write_study

@pytest.mark.parametrize("finished, refused", [("bf16", True), ("no", False)])
def test_a_study_refuses_to_go_on_in_another_precision_than_its_finished_runs(tmp_path, capsys, monkeypatch,
                                                                           finished, refused):
    """Issue 32's v6 stopped between runs trained in bf16 (a CPU with AVX-512 BF16); the next session's CPU had
    only AVX2, where `train.mixed_precision=auto` computes in fp32: its held-out cells would have mixed the two."""
    import distill.precision
    from distill.report.study_checks import check_precision
    monkeypatch.setattr(distill.precision, "native_precision", lambda cuda: "no")  # fp32 here, on any CPU
    path = write_study(tmp_path, f"  plain:\n    recipe: {ROOT / PLAIN}\n")
    jobs = plan(path)
    d = fake_run(jobs[0].run_dir.parent, jobs[0].run_dir.name, 70.0)
    cfg = load_config(jobs[0].recipe, jobs[0].settings)
    assert cfg.train.mixed_precision == "auto"
    (d / "config.yaml").write_text(to_yaml(cfg))
    (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()),
                                                "mixed_precision": finished}))
    if not refused:
        assert check_precision(jobs, path, None) is None
        from distill.report import scaling  # a ladder extended from an earlier study's rows: those that record it
        monkeypatch.setattr(scaling, "prior_rows", lambda sc: [{"run": "plain_w16d2_e1_s0", "mixed_precision": "bf16"},
                                                             {"run": "plain_w16d2_e1_s1"}])
        with pytest.raises(ConfigError, match=r": 1 of the runs it compares with \(plain_w16d2_e1_s0, \.\.\.\) "):
            check_precision(jobs, path, object())
        return
    line = one_error_line(main(["study", str(path)]), capsys)
    assert line.startswith(f"error: study {path}: 1 of the runs it compares with (plain_s0, ...) computed "
                           "train.mixed_precision=auto in bf16, but on this CPU dispatching ")
    assert "its next ones (plain_s1, ...) would compute in fp32" in line and "go on where auto computes in bf16" in line
    assert not (tmp_path / "out" / "s" / "plain_s1").exists()
    (d / "config.yaml").write_text(to_yaml(load_config(jobs[0].recipe, [*jobs[0].settings, "train.mixed_precision=bf16"])))
    assert check_precision(jobs, path, None) is None  # asked for bf16 by name: the same wherever it runs


def test_a_run_whose_complete_teacher_lost_its_weights_is_refused_before_any_run(tmp_path, capsys):
    """A study folder rebuilt from committed records (issue 32's v6, its machine gone): the teacher's summary is
    there, its weights are not; each KD run would have failed in turn."""
    from distill.report.study_checks import check_weights
    path = write_study(tmp_path, f"  teacher:\n    recipe: {ROOT / PLAIN}\n    seeds: [0]\n"
                                 f"  kd:\n    recipe: {ROOT / 'recipes/fashion_mnist/kd_tiny.yaml'}\n    teacher: teacher\n")
    teacher = fake_run(tmp_path / "out" / "s", "teacher_s0", 90.0)
    line = one_error_line(main(["study", str(path)]), capsys)
    assert line == (f"error: study {path}: kd_s0 starts from {teacher}/student.safetensors, which is gone although "
                    f"teacher_s0 is complete; move {teacher} aside and the study trains it again (the same run: same "
                    "settings, same seed), or put the file back")
    assert not (tmp_path / "out" / "s" / "kd_s0").exists()
    (teacher / "student.safetensors").write_bytes(b"")
    assert check_weights(plan(path), path) is None


def test_a_fork_whose_complete_source_lost_its_checkpoint_is_refused(tmp_path):
    from distill.report.study import Job
    from distill.report.study_checks import check_weights
    source = fake_run(tmp_path, "plain_w8_e4_s0", 70.0)
    step = source / "checkpoints" / "step_000000040"
    fork = Job("plain_w8_e2", 0, tmp_path / "plain_w8_e2_s0", [], needs=source, settings=[f"train.resume={step}"])
    with pytest.raises(ConfigError, match=r"plain_w8_e2_s0 starts from .*step_000000040, which is gone although "
                                          r"plain_w8_e4_s0 is complete"):
        check_weights([fork], tmp_path / "study.yaml")
    step.mkdir(parents=True)
    assert check_weights([fork], tmp_path / "study.yaml") is None
    (source / "summary.json").unlink()  # not complete: the study runs it first, and then the fork
    step.rmdir()
    assert check_weights([fork], tmp_path / "study.yaml") is None


def test_a_gain_between_runs_computed_in_other_precisions_says_so(tmp_path):
    """Two runs of one config (`train.mixed_precision=auto`) on two kinds of CPU: bf16 and fp32, the config alike."""
    def runs(name, distill, precisions):
        dirs = []
        for s, p in enumerate(precisions):
            d = fake_run(tmp_path, f"{name}_s{s}", 70.0 + s, distill=distill, teacher="resnet18" if distill != "none"
                         else None, seed=s, aug_seed=0)
            (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()),
                                                        "mixed_precision": p}))
            dirs.append(d)
        return dirs

    rows = {r["variant"]: r for r in variant_rows(group(load_runs([*runs("plain", "none", ["bf16", "bf16"]),
                                                                   *runs("kd", "soft", ["no", "bf16"])])))}
    assert rows["kd"]["also_differs"] == "precision computed bf16/fp32 vs bf16 (NOT declared)"
    rows = {r["variant"]: r for r in variant_rows(group(load_runs([*runs("plain2", "none", ["no", "no"]),
                                                                   *runs("kd2", "soft", ["no", "no"])])))}
    assert rows["kd2"]["also_differs"] == "-"


def test_a_study_predicting_from_three_sizes_declares_its_law_before_any_run(tmp_path):
    """Three fitted sizes cannot choose a law by leaving one out (docs/fit.md): v1's ladder without its
    declared forms is refused before anything runs, naming the fix; an unknown law or method is refused too."""
    import yaml

    from distill.report.study import load_study

    study = yaml.safe_load((ROOT / "recipes/studies/scaling_cpu.yaml").read_text())
    for m in study["scaling"]["methods"].values():
        m["recipe"] = str(ROOT / "recipes/fashion_mnist" / m["recipe"].rsplit("/", 1)[-1])
    study["runs"]["teacher"]["recipe"] = str(ROOT / "recipes/fashion_mnist/teacher_resnet18.yaml")
    study["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "s.yaml"
    for forms, says in (({"plain": "kaplan"}, "kd is fitted on 3 sizes, and choosing its law by leaving one size out "
                         "needs 4 (docs/fit.md); add a size, or declare its law (scaling.forms: {kd: chinchilla})"),
                        ({"plain": "kaplan", "kd": "hoffmann"}, "scaling.forms.kd=hoffmann: no such law"),
                        ({"plain": "kaplan", "kd": "kaplan", "hard": "kaplan"}, "scaling.forms.hard=kaplan: no method 'hard' is fitted here")):
        path.write_text(yaml.safe_dump({**study, "scaling": {**study["scaling"], "forms": forms}}))
        with pytest.raises(ConfigError) as e:
            load_study(path)
        assert says in str(e.value), str(e.value)
    path.write_text(yaml.safe_dump(study))  # the committed recipe declares both
    assert load_study(path).scaling.forms == {"plain": "kaplan", "kd": "chinchilla"}
    assert not (tmp_path / "runs").exists()


def test_a_method_fitted_only_from_prior_runs_can_declare_its_law(tmp_path):
    """v5 extends v4's table (scaling.prior_runs), whose data axis plain-u20000 has three sizes: its law is
    declared although v5 runs no data axis of its own; a method neither fits is still refused."""
    import yaml

    from distill.report.study import load_study

    v5 = ROOT / "recipes/studies/scaling_cpu_v5.yaml"
    assert load_study(v5).scaling.forms == {"plain-u20000": "kaplan"}
    study = yaml.safe_load(v5.read_text())
    for m in study["scaling"]["methods"].values():
        m["recipe"] = str(ROOT / "recipes/fashion_mnist" / m["recipe"].rsplit("/", 1)[-1])
    study["runs"]["teacher"]["recipe"] = str(ROOT / "recipes/fashion_mnist/teacher_resnet18.yaml")
    study["scaling"]["prior_runs"] = str(ROOT / "docs/scaling_cpu_v4/report/runs.jsonl")
    study["scaling"]["forms"] = {"plain-u5000": "kaplan"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"no method 'plain-u5000' is fitted here \(the methods: kd, plain, plain-u20000\)"):
        load_study(path)


def test_a_held_out_rung_that_no_law_could_predict_is_refused_before_any_run(tmp_path, capsys):
    """A scaling study always predicts its held-out size (the largest here): with 2 sizes below it, no law
    (3 sizes at least) could, and the study would stop at its prediction with its fitted runs spent. It is
    refused, its dry run too, before any folder is made; rows of an earlier study (prior_runs) count."""
    import yaml

    from distill.report import scaling
    from distill.report.study import load_study

    sizes = {name: [f"student.embed_dim={d}", "student.depth=2", "student.num_heads=2"]
             for name, d in (("a", 32), ("b", 64), ("c", 128))}
    study = {"name": "s", "output_dir": str(tmp_path / "runs"), "seeds": [0],
             "scaling": {"sizes": sizes, "epochs": [1], "methods": {"plain": {"recipe": str(ROOT / PLAIN)}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    says = "plain is fitted on 2 sizes below the held-out c, and a law needs 3 (docs/fit.md)"
    assert says in one_error_line(main(["study", str(path)]), capsys)  # the dry run makes the same checks
    assert not (tmp_path / "runs").exists()
    study["scaling"]["prior_runs"] = str(ROOT / "docs/scaling_cpu_v5/report/runs.jsonl")  # plain at 8 sizes more
    path.write_text(yaml.safe_dump(study))
    scaling.check_predictable(path, load_study(path).scaling)
