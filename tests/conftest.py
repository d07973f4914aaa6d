import contextlib
import io
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# The suite is CPU tests (bit-exact runs, gloo processes): on a machine with a GPU, it is hidden from them
# and from every process they start, so they compute as on a CPU-only machine. The CUDA tests (marked
# `cuda`) run in a session of their own, with the GPU visible and nothing else:
#   DISTILL_TEST_CUDA=1 pytest -m cuda        (scripts/gpu_check.sh runs it)
CUDA_SESSION = os.environ.get("DISTILL_TEST_CUDA") == "1"
if not CUDA_SESSION:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything asks CUDA how many devices it has

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: the cores are the workers'; one thread each, and
    os.environ["OMP_NUM_THREADS"] = "1"  # for the runs they start
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Debian's dataset-fashion-mnist is not installed (make data)")


# Small and fast, but real: 4096 Fashion-MNIST training images, 2 epochs (256 steps), the whole
# pipeline, enough to learn (about 48 % top-1); 1999 test images.
QUICK = ["data.train_subset=4096", "data.test_subset=1999", "data.batch_size=32", "data.cutmix_alpha=0",
         "train.epochs=2", "train.lr=1e-3", "train.lr_base_batch=32", "train.warmup_epochs=0.2",
         "train.log_every=16", "train.mixed_precision=no"]
# Half as long, for runs that are compared with each other (killed and resumed, several processes) rather
# than asked to learn: 2048 images, 2 epochs of 64 steps; 999 test images, split unevenly by 2 processes.
# A narrower, shallower student (0.42M parameters, not 3.2M): what these runs test does not depend on the
# width, and a step still takes long enough (tens of ms on one thread) for a signal to land mid-epoch.
SHORT = ["data.train_subset=2048", "data.test_subset=999", "data.batch_size=32", "data.cutmix_alpha=0",
         "train.epochs=2", "train.lr=1e-3", "train.lr_base_batch=32", "train.warmup_epochs=0.2", "train.log_every=16",
         "train.mixed_precision=no", "student.embed_dim=128", "student.depth=2", "student.num_heads=2"]
SHORT_STEPS_PER_EPOCH = 64
PLAIN = "recipes/fashion_mnist/plain_tiny.yaml"


needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU "
                                                    "(DISTILL_TEST_CUDA=1 pytest -m cuda)")]


def pytest_collection_modifyitems(config, items):
    """The modules with the most real runs (tests marked slow) first, each module's tests kept in their
    order: under --dist loadscope a process takes a whole module at a time, so the longest going first
    lets both processes finish together instead of one waiting on the last long module.
    A CUDA session runs the CUDA tests only: the others must not see the GPU."""
    slow = Counter(item.module.__name__ for item in items if "slow" in item.keywords)
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable
    if CUDA_SESSION:
        skip = pytest.mark.skip(reason="DISTILL_TEST_CUDA=1 runs the CUDA tests only (-m cuda); the rest hide the GPU")
        for item in items:
            if "cuda" not in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory):
    """One uninterrupted plain QUICK run (in this process): the run that must learn, read by several tests."""
    out = tmp_path_factory.mktemp("plain")
    res = run_main("train", PLAIN, f"output_dir={out}", *QUICK)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "fashion_mnist_plain_tiny"


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """One uninterrupted single-process plain SHORT run, in a fresh process as the runs compared with it
    bit for bit are (killed, resumed, launched): the same threads, the same kernels."""
    out = tmp_path_factory.mktemp("short")
    res = run_cli("train", PLAIN, f"output_dir={out}", *SHORT)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "fashion_mnist_plain_tiny"


FP32 = "train.mixed_precision=no"


def in_fp32(args) -> list:
    """`train`/`bench` args computing in fp32, as the suite was written (and bit-exact results need): the
    default `auto` takes bf16 on a CPU with AVX-512 BF16, and no test may depend on bf16 or its speed. The
    setting goes first among the overrides, so a test's own `train.mixed_precision=...` still wins."""
    args = [str(a) for a in args]
    if len(args) >= 2 and args[0] in ("train", "bench") and not args[1].startswith("-"):
        return [args[0], args[1], FP32, *args[2:]]
    return args


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m distill ...` in a fresh process (fp32: `in_fp32`); returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill", *in_fp32(args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


@contextlib.contextmanager
def own_signal_handlers():
    """Put back this process's SIGINT and SIGTERM handlers afterwards. A run in this process (`Trainer`)
    installs its stop-request handlers, which only set a flag, and leaves them: then Ctrl-C no longer stops
    pytest, and the workers of a later multiprocessing Pool inherit a SIGTERM that does not end them, so
    the pool's shutdown waits for them forever (`distill prepare` in test_prepare.py hung so)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """For tests that call `distill.cli.main` themselves (run_main does this on its own)."""
    with own_signal_handlers():
        yield


def run_main(*args) -> subprocess.CompletedProcess:
    """`distill ...` in this process, through `distill.cli.main`: what `run_cli` returns (exit status, stdout,
    stderr) without a fresh interpreter's ~6 s of imports. An exception that escapes `main` (a traceback in a
    shell) fails the test. Not for what needs a process of its own: launchers, signals, kills, several
    processes, a changed environment, or a run compared bit for bit with a `run_cli` run (other threads)."""
    from distill.cli import main

    out, err = io.StringIO(), io.StringIO()
    with own_signal_handlers(), contextlib.chdir(ROOT), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        status = main(in_fp32(args))
    return subprocess.CompletedProcess(["distill", *map(str, args)], status, out.getvalue(), err.getvalue())


def noise_jpegs(root: Path, counts: dict, size: tuple, classes: int, seed: int, **save) -> Path:
    """An image folder of noise JPEGs: `counts` images per split ({"train": 16, "val": 2}) of `size`
    (width, height), in `classes` class folders, from `seed`; `save` goes to PIL's save (quality=90)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for i in range(n):
            path = root / split / f"c{i % classes}" / f"{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save)
    return root
