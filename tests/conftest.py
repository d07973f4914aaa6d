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


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m distill ...` in a fresh process; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=full_env, timeout=timeout)
