"""`train.resume=auto` on a finished run: the config is compared first, as for an
unfinished run; the same epochs answer "already complete"; more epochs extend the run. Through the CLI's
`main` in this process: seven fresh interpreters would add ~40 s of imports."""
import json

import pytest
from safetensors.torch import load_file

from conftest import PLAIN, needs_fmnist, run_main

pytestmark = [needs_fmnist, pytest.mark.slow]  # real (8-step) training runs

TINY = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=32", "data.cutmix_alpha=0",
        "train.lr=1e-3", "train.lr_base_batch=32", "train.warmup_epochs=0", "name=r"]


def one_error_line(res) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_finished_run_is_compared_then_extended(tmp_path):
    run = tmp_path / "r"
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    first, first_weights = (run / "summary.json").read_text(), load_file(str(run / "student.safetensors"))

    # another recipe, or another setting, on the finished run: refused as on an unfinished one
    kd = run_main("train", "recipes/fashion_mnist/kd_tiny.yaml", f"output_dir={tmp_path}", *TINY, "train.epochs=1",
                  "train.resume=auto")
    assert "differs from the run being resumed" in one_error_line(kd)
    lr = one_error_line(run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1", "train.lr=2e-3",
                                 "train.resume=auto"))
    assert lr.startswith("error: train.lr=0.002 differs from the run being resumed (0.001 in ")
    assert (run / "summary.json").read_text() == first  # nothing was touched

    # the same settings: complete; more epochs: the run goes on from its last checkpoint
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1", "train.resume=auto")
    assert res.returncode == 0 and "is already complete" in res.stderr, res.stderr[-2000:]
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=2", "train.resume=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"extending {run} from 1 to 2 epochs; the lr schedule is laid out again over 2 epochs" in res.stdout
    assert "resumed from" in res.stdout and "epoch 1 step 0" in res.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["extended_from_epochs"] == [1]
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [0, 1]
    after = load_file(str(run / "student.safetensors"))
    assert any(not after[k].equal(first_weights[k]) for k in after)  # it trained the second epoch

    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=2", "train.resume=auto")
    assert res.returncode == 0 and "is already complete" in res.stderr, res.stderr[-2000:]
    fewer = one_error_line(run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1",
                                    "train.resume=auto"))
    assert "train.epochs=1 is fewer than the 2 epochs" in fewer and "cannot be shortened" in fewer


def test_a_run_is_not_resumed_in_another_precision(tmp_path, monkeypatch):
    """`auto` follows the hardware: a run started in fp32 (a CPU without AVX-512 BF16) and resumed on one with it
    would go on in bf16, partway; refused in one line, the run untouched."""
    import distill.precision
    from accelerate.state import AcceleratorState
    monkeypatch.setattr(distill.precision, "native_precision", lambda cuda: "no")
    run = tmp_path / "r"
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=1", "train.mixed_precision=auto")
    assert res.returncode == 0 and "precision fp32 (auto)" in res.stdout, res.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    monkeypatch.setattr(distill.precision, "native_precision", lambda cuda: "bf16")
    AcceleratorState._reset_state(True)  # as a fresh process on that machine starts (Accelerate's state is global)
    line = one_error_line(run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=2",
                                   "train.mixed_precision=auto", "train.resume=auto"))
    assert line.startswith(f"error: {run}/checkpoints/step_000000008 was computed in fp32, but this run would go on in bf16 "
                           "(train.mixed_precision=auto on this CPU dispatching "), line
    assert "go on where it computes in fp32" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    monkeypatch.setattr(distill.precision, "native_precision", lambda cuda: "no")  # back on its own kind: goes on
    AcceleratorState._reset_state(True)
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "train.epochs=2", "train.mixed_precision=auto",
                   "train.resume=auto")
    assert res.returncode == 0 and "resumed from" in res.stdout, res.stderr[-2000:]

