"""What a run's summary says about it: the code it ran (the commit as it started, not as it ended) and a
distilled run's agreement with its teacher, scored in its last evaluation. Tiny runs (8 steps) through the
CLI's `main` in this process."""
import json
import subprocess

import pytest

from conftest import PLAIN, needs_fmnist, run_main
from test_resume_finished import TINY

pytestmark = [needs_fmnist, pytest.mark.slow]  # real (8-step) training runs


def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """A commit made while a run trains does not change the code it imported: its summary names the commit
    the run started from. Here git answers one commit before the run's evaluation and another after."""
    import distill.runs.records as records
    import distill.train.trainer as trainer
    head = ["a" * 40]
    real_run = subprocess.run

    def git(cmd, **kw):  # `git rev-parse HEAD` answers the current head; `git status` a clean tree
        if cmd[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(cmd, 0, head[0] + "\n", "")
        return subprocess.CompletedProcess(cmd, 0, "", "") if cmd[0] == "git" else real_run(cmd, **kw)

    def evaluate(*a, **kw):
        head[0] = "b" * 40  # committed while the run trained
        return real_evaluate(*a, **kw)

    real_evaluate = trainer.evaluate
    monkeypatch.setattr(records.subprocess, "run", git)
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    records.git_commit.cache_clear()  # as in a fresh process
    try:
        res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1")
    finally:
        records.git_commit.cache_clear()  # the next run in this process reads the real one
    assert res.returncode == 0, res.stderr[-2000:]
    assert head[0] == "b" * 40 and json.loads((tmp_path / "r/summary.json").read_text())["git_commit"] == "a" * 40


def test_a_distilled_run_scores_its_teacher_agreement_in_its_last_evaluation(tmp_path, monkeypatch):
    """A run with a teacher passes over the test set once at its end: the last epoch's evaluation also scores
    the final student's agreement with its teacher. One stopped between its last checkpoint and its summary
    scores it in a pass of its own on resuming, and the two agree exactly (the same weights, the same images)."""
    import distill.train.trainer as trainer
    calls = []
    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **kw: calls.append(kw.get("teacher")) or evaluate(*a, **kw))
    kd = ["recipes/fashion_mnist/kd_tiny.yaml", f"output_dir={tmp_path}", *TINY, "train.epochs=1", "teacher.checkpoint=null",
          "teacher.model=resnet10t", "teacher.small_input_stem=false"]
    res = run_main("train", *kd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(calls) == 1 and calls[0] is not None  # one pass, with the teacher
    run = tmp_path / "r"
    first = json.loads((run / "summary.json").read_text())
    assert "teacher_agreement" not in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    (run / "summary.json").unlink()  # as if stopped after its last checkpoint, before its summary
    calls.clear()
    res = run_main("train", *kd, "train.resume=auto")
    assert res.returncode == 0 and "resumed from" in res.stdout, res.stderr[-2000:]
    assert len(calls) == 1 and calls[0] is not None
    assert json.loads((run / "summary.json").read_text())["teacher_agreement"] == first["teacher_agreement"]
