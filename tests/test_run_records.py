"""What a run's summary says about it: the code it ran (the commit as it started, not as it ended), a
distilled run's agreement with its teacher, scored in its last evaluation, and its training time, a stop and
resume included. Tiny runs (8 steps) through the
CLI's `main` in this process."""
import json
import shutil
import subprocess

import pytest
import torch

from conftest import PLAIN, needs_fmnist, run_main
from distill.runs.checkpoint import complete_checkpoints
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


def test_a_run_stopped_mid_epoch_counts_its_time_before_the_stop(tmp_path):
    """`wall_s` is the run's training time, resumed runs included: a mid-epoch checkpoint keeps the time so
    far, so a run stopped there and resumed counts the steps before the stop (before, it kept the time at the
    epoch's start, and v6_fp32's KD seed 2, stopped at step 30 of 39, recorded only its last 9 steps)."""
    args = ("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1", "train.checkpoint_every_steps=4")
    assert run_main(*args).returncode == 0
    run = tmp_path / "r"
    mid, end = complete_checkpoints(run)  # steps 4 and 8 of the epoch's 8
    before_stop = torch.load(mid / "custom_checkpoint_0.pkl", weights_only=False)["wall_s"]
    whole = json.loads((run / "summary.json").read_text())["wall_s"]
    assert 0 < before_stop < whole
    shutil.rmtree(end)  # as if stopped at step 4: the later checkpoint and the summary not yet written
    (run / "summary.json").unlink()
    res = run_main(*args, "train.resume=auto")
    assert res.returncode == 0 and "resumed from" in res.stdout, res.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["wall_s"] > before_stop
