"""A run records when it started and finished (UTC, ISO 8601) in summary.json; a resumed run keeps its
first start. A scaling study's pre-registration check compares these with its prediction's lock."""
import json
import time
from datetime import datetime

import pytest

from conftest import PLAIN, needs_fmnist, run_main
from distill.runs.checkpoint import Progress

TINY = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=32", "data.cutmix_alpha=0",
        "train.lr=1e-3", "train.lr_base_batch=32", "train.warmup_epochs=0", "name=r"]


def test_the_start_travels_with_the_checkpoint():
    first = Progress()
    started = datetime.fromisoformat(first.started_at)
    assert started.utcoffset().total_seconds() == 0  # UTC
    time.sleep(0.01)
    resumed = Progress()  # a resumed process builds a new one, then loads the checkpoint's
    assert resumed.started_at != first.started_at
    resumed.load_state_dict(first.state_dict())
    assert resumed.started_at == first.started_at
    old = Progress()
    old.load_state_dict({k: v for k, v in first.state_dict().items() if k != "started_at"})
    assert old.started_at is None  # a checkpoint from before the record: unknown, not the resume's time


@needs_fmnist
@pytest.mark.slow  # two real 8-step epochs
def test_summary_has_start_and_finish_and_a_resume_keeps_the_first_start(tmp_path):
    run = tmp_path / "r"
    assert run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1").returncode == 0
    one = json.loads((run / "summary.json").read_text())
    start, end = datetime.fromisoformat(one["started_at"]), datetime.fromisoformat(one["finished_at"])
    assert start.utcoffset().total_seconds() == 0 and start < end
    assert datetime.fromtimestamp((run / "config.yaml").stat().st_mtime, start.tzinfo) >= start  # made after it began
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=2", "train.resume=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    two = json.loads((run / "summary.json").read_text())
    assert two["started_at"] == one["started_at"] and two["finished_at"] > one["finished_at"]
