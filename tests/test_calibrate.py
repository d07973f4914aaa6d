"""The calibrated dry run: a run's hours from a timed short run of its size (start-up + its own images x
seconds an image + its evaluations x one evaluation), by hand; and the report's estimate against the
measured span. The timed run is stood in for (a real one is `distill study FILE --dry-run --calibrate`)."""
import json

import pytest
import yaml

from conftest import ROOT
from distill.report import calibrate
from distill.report.estimate import estimate
from distill.report.study import load_study, plan

W64 = 1.081088e7  # w64d2's training FLOPs per image


def test_a_runs_calibrated_hours_count_start_up_its_own_images_and_evaluations(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "output_dir": str(tmp_path / "out"), "seeds": [0],
        "overrides": ["data.train_subset=5000", "train.cooldown=0.25", "train.eval_every=4"],
        "scaling": {"sizes": {"a": ["student.embed_dim=64", "student.depth=2", "student.num_heads=2"]},
                    "budgets": [16 * W64 * 4992, 8 * W64 * 4992],
                    "methods": {"plain": {"recipe": str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")}}}}))
    timed = []
    rates = {"s_per_image": 1e-3, "eval_s": 2.0, "startup_s": 10.0}
    monkeypatch.setattr(calibrate, "time_run", lambda job, cfg, folder: timed.append(job.run_dir.name) or rates)
    jobs = plan(path)
    rows = calibrate.calibrate(jobs, estimate(jobs, load_study(path)), tmp_path / "out/s")
    assert timed == ["plain_a_e16_s0"]  # one timed run for the size: its fork shares the student
    by = {r["run"]: r["hours_calibrated"] * 3600 for r in rows}
    # the long run: 16 x 4,992 images, evaluated after epochs 4, 8, 12 and 16
    assert by["plain_a_e16_s0"] == pytest.approx(10.0 + 16 * 4992 * 1e-3 + 4 * 2.0)
    # the 8-epoch fork starts from epoch 6's checkpoint: 2 epochs of its own, evaluated after epoch 8 only
    assert by["plain_a_e8_s0"] == pytest.approx(10.0 + 2 * 4992 * 1e-3 + 1 * 2.0)
    est = json.loads((tmp_path / "out/s" / calibrate.ESTIMATE).read_text())
    assert est["total_hours"] == pytest.approx(sum(by.values()) / 3600)


def test_the_report_puts_the_estimate_beside_the_measured_span(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / calibrate.ESTIMATE).write_text(json.dumps({"made_at": "2026-01-01T00:00:00+00:00", "total_hours": 1.5,
                                                         "runs": {"r0": 0.5, "r1": 1.0}}))
    for name, start, end in (("r0", "01:00", "01:30"), ("r1", "01:30", "03:00")):
        (folder / name).mkdir()
        (folder / name / "summary.json").write_text(json.dumps({
            "started_at": f"2026-01-02T{start}:00+00:00", "finished_at": f"2026-01-02T{end}:00+00:00"}))
        (folder / name / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "epoch_s": 900.0}) + "\n")
    text = "\n".join(calibrate.report_lines(folder, [folder / "r0", folder / "r1"]))
    assert "1.50 h for the 2 runs finished" in text and "2.00 h from the first run's start" in text
    assert "(estimate / measured = 0.75)" in text and "0.50 h" in text  # the loops: 2 x 900 s
    # a study rebuilt from its committed records keeps no metrics.jsonl: the loops are unknown, not zero
    (folder / "r1" / "metrics.jsonl").unlink()
    text = "\n".join(calibrate.report_lines(folder, [folder / "r0", folder / "r1"]))
    assert "start-up not): 0.25 h in the 1 of 2 runs that keep metrics.jsonl" in text
    (folder / "r0" / "metrics.jsonl").unlink()
    text = "\n".join(calibrate.report_lines(folder, [folder / "r0", folder / "r1"]))
    assert "start-up not): not in these records (no metrics.jsonl)" in text and "0.00 h" not in text
