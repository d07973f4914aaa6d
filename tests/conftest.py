import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(min(2, os.cpu_count() or 1))

needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Debian's dataset-fashion-mnist is not installed (make data)")


# Small and fast, but real: 4096 Fashion-MNIST training images, 2 epochs (256 steps), the whole
# pipeline; 1999 test images, so that 2 processes split the test set unevenly.
QUICK = ["data.train_subset=4096", "data.test_subset=1999", "data.batch_size=32", "data.cutmix_alpha=0",
         "train.epochs=2", "train.lr=1e-3", "train.lr_base_batch=32", "train.warmup_epochs=0.2",
         "train.log_every=16"]
PLAIN = "recipes/fashion_mnist/plain_tiny.yaml"


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory):
    """One uninterrupted single-process plain run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("plain")
    res = run_cli("train", PLAIN, f"output_dir={out}", *QUICK)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "fashion_mnist_plain_tiny"


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m distill ...` in a fresh process; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=full_env, timeout=timeout)
