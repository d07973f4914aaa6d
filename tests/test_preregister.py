"""A scaling study's prediction for its held-out rung is locked (sha256, fitted runs) before that rung
runs; the report says in one line whether it was, unchanged, from the runs' own start and finish times."""
import json
from pathlib import Path

import pytest

from conftest import ROOT
from distill.report import preregister, study as study_mod
from distill.report.study import run_study
from distill.runs.checkpoint import utc_now


def fake(folder: Path, name: str, started: str, finished: str) -> Path:
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps({"name": name, "started_at": started, "finished_at": finished}))
    return d


T = ["2000-01-01T01:00:00.000+00:00", "2000-01-01T02:00:00.000+00:00", "2000-01-01T03:00:00.000+00:00",
     "2000-01-01T04:00:00.000+00:00"]  # all before a lock made now


@pytest.fixture
def locked(tmp_path):
    """Two fitted runs finished before the lock (made now), the prediction written before it."""
    fitted = [fake(tmp_path, f"plain_a_e1_s{s}", T[0], T[1]) for s in (0, 1)]
    (tmp_path / "prediction.json").write_text(json.dumps({"predictions": [{"run": "plain_b_e1", "predicted_top1": 80}]}))
    lock = json.loads(preregister.lock(tmp_path, fitted).read_text())
    assert lock["fitted_runs"] == ["plain_a_e1_s0", "plain_a_e1_s1"] and len(lock["sha256"]) == 64
    return tmp_path, lock["locked_at"]


def test_held_out_runs_started_after_an_unchanged_lock_verify(locked):
    folder, at = locked
    held = [fake(folder, f"plain_b_e1_s{s}", "2099-01-01T00:00:00.000+00:00", "2099-01-01T01:00:00.000+00:00")
            for s in (0, 1)]
    line = preregister.verdict(folder, held)
    assert line.startswith("Pre-registration verified: prediction.json (sha256 ") and f"lock at {at}" in line
    assert "its 2 fitted runs finished and before each of the 2 held-out runs started" in line
    before = (folder / "prediction.lock.json").read_text()
    preregister.lock(folder, [])  # made once
    assert (folder / "prediction.lock.json").read_text() == before


def test_a_prediction_edited_after_its_lock_is_not_verified(locked):
    folder, _ = locked
    held = [fake(folder, "plain_b_e1_s0", "2099-01-01T00:00:00.000+00:00", "2099-01-01T01:00:00.000+00:00")]
    (folder / "prediction.json").write_text(json.dumps({"predictions": [{"run": "plain_b_e1", "predicted_top1": 85}]}))
    line = preregister.verdict(folder, held)
    assert line.startswith("Pre-registration NOT verified: prediction.json's sha256 is ") and "changed after the lock" in line


def test_a_held_out_run_started_before_the_lock_is_not_verified(locked):
    folder, _ = locked
    held = [fake(folder, "plain_b_e1_s0", T[2], T[3])]
    line = preregister.verdict(folder, held)
    assert line.startswith("Pre-registration NOT verified: held-out run plain_b_e1_s0 started at " + T[2])


def test_runs_without_times_cannot_verify(locked):
    folder, _ = locked
    d = folder / "plain_b_e1_s0"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"name": "plain_b_e1_s0"}))  # a run from before the record
    assert preregister.verdict(folder, [d]).startswith("Pre-registration NOT verifiable: 1 run(s) record no start")


def test_the_study_locks_its_prediction_before_the_held_out_rung_and_reports_it(tmp_path, monkeypatch, capsys):
    """Issue 31: a prediction was kept with the time written inside it, and checked against config.yaml's
    modification time, neither of which anything guards. The training and the fits are stood in for: each
    run is a summary.json written when the study reaches it, stamped with its start and finish."""
    recipe = ROOT / "recipes/fashion_mnist/plain_tiny.yaml"
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path}/out\nseeds: [0, 1]\nscaling:\n  sizes:\n"
                    "    a: [student.embed_dim=64, student.depth=2, student.num_heads=2]\n"
                    "    b: [student.embed_dim=96, student.depth=2, student.num_heads=3]\n"
                    f"  epochs: [1]\n  methods:\n    plain:\n      recipe: {recipe}\n")

    def train(job, status):
        start = utc_now()
        fake(job.run_dir.parent, job.run_dir.name, start, utc_now())
        status[job.run_dir] = "ran"

    def predict(folder, done, sc, held):
        (folder / "prediction.json").write_text(json.dumps({"predictions": [], "fitted_on": len(done)}))
        return folder / "prediction.json"

    monkeypatch.setattr(study_mod, "_run", train)
    monkeypatch.setattr(study_mod.scaling, "predict_holdout", predict)
    monkeypatch.setattr(study_mod.scaling, "check_predictable", lambda path, sc: None)  # its precondition: 3 sizes
    monkeypatch.setattr(study_mod.scaling, "write_scaling_report", lambda runs, sc, folder, out: out / "scaling.json")
    monkeypatch.setattr(study_mod, "write_report", lambda runs, out, *a: (out.mkdir(parents=True), out / "report.md")[1])
    assert run_study(path) == 0
    folder = tmp_path / "out" / "s"
    lock = json.loads((folder / "prediction.lock.json").read_text())
    assert lock["fitted_runs"] == ["plain_a_e1_s0", "plain_a_e1_s1"]
    line = "Pre-registration verified: prediction.json (sha256 " + lock["sha256"][:12]
    assert line in (folder / "report" / "report.md").read_text() and line in capsys.readouterr().out
