"""A full disk, for real: small tmpfs filesystems that fill up under durable writes and under a
training run, which must stop with one line, leave nothing half-written, and resume exactly."""
import os
import re
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import PLAIN as RECIPE
from conftest import SHORT, needs_fmnist, run_cli
from distill.runs import durable, records as runlog
from distill.train.cache import LogitCache
from distill.runs.checkpoint import complete_checkpoints
from distill.errors import OutOfSpaceError

NAME = "fashion_mnist_plain_tiny"
FULL = ("no space left on {fs} while writing {what}; free space or lower train.keep_checkpoints, "
        "then resume with train.resume=auto")


@contextmanager
def tmpfs(where: Path, size: str):
    """A tmpfs of `size` mounted at `where` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    try:
        yield where
    finally:  # a lazy unmount if a file is still open, so no mount outlives the test
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> None:
    """Fill `fs` up to `leave` free bytes."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(fs / "filler", "wb") as f:
        try:
            f.write(b"x" * max(free - leave, 0))
        except OSError:
            pass


def names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# ---- durable writes, unit by unit --------------------------------------------------------------

def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    """Any failure midway (here not a full disk) removes the temporary file and keeps the old one."""
    path = tmp_path / "summary.json"
    durable.write_text(path, "old\n", str(path))

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise ValueError("broken serializer")

    with pytest.raises(ValueError, match="broken serializer"):  # not a full disk: passed on unchanged
        durable.replace_file(path, half_then_fail, str(path))
    assert path.read_text() == "old\n"
    assert names(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "text"])
def test_full_disk_is_one_line_naming_mount_and_what(tmp_path, writer):
    """A real ENOSPC from each serializer becomes OutOfSpaceError; the old file survives."""
    big = {"w": torch.zeros(1 << 19)}  # 2 MiB, on a 1 MiB filesystem
    write = {"safetensors": lambda tmp: save_file(big, str(tmp)),
             "torch.save": lambda tmp: torch.save(big, str(tmp)),  # its errors carry no errno
             "text": lambda tmp: tmp.write_text("x" * (2 << 20))}[writer]
    with tmpfs(tmp_path / "fs", "1m") as fs:
        path = fs / "run" / "weights.bin"
        path.parent.mkdir()
        path.write_bytes(b"complete")
        with pytest.raises(OutOfSpaceError) as info:
            durable.replace_file(path, write, f"weights {path}")
        assert str(info.value) == FULL.format(fs=fs, what=f"weights {path}")
        assert "\n" not in str(info.value)
        assert path.read_bytes() == b"complete"
        assert names(path.parent) == ["weights.bin"]


def test_full_disk_append_leaves_no_half_line(tmp_path):
    with tmpfs(tmp_path / "fs", "64k") as fs:
        path = fs / "metrics.jsonl"
        durable.append_line(path, '{"epoch": 0}\n', str(path))
        fill(fs)
        with pytest.raises(OutOfSpaceError, match=re.escape(f"on {fs} while writing {path};")):
            durable.append_line(path, '{"epoch": 1, "pad": "' + "x" * 8192 + '"}\n', str(path))
        assert path.read_text() == '{"epoch": 0}\n'


def test_logit_cache_on_full_disk_keeps_earlier_epochs(tmp_path):
    """A cache file that does not fit: OutOfSpaceError, no temporary, the earlier epoch's file whole."""
    with tmpfs(tmp_path / "fs", "256k") as fs:
        cache = LogitCache(fs / "logit_cache", {"teacher": "t"}, rank=0, world_size=1, steps_per_epoch=4)
        for epoch, classes in [(0, 10), (1, 10_000)]:  # 160 bytes, then 160 kB: more than is left
            cache.start_epoch(epoch, 0, "cpu")
            for step in range(4):
                cache.put(step, torch.full((1, classes), float(step)))
            if epoch == 0:
                cache.end_epoch(epoch)
                fill(fs, leave=64 << 10)
        with pytest.raises(OutOfSpaceError, match=re.escape(f"on {fs} while writing teacher-logit cache ")):
            cache.end_epoch(1)
        assert names(cache.dir) == ["epoch_0000_rank0of1.safetensors", "key.json"]
        assert torch.equal(load_file(str(cache.dir / "epoch_0000_rank0of1.safetensors"))["logits"][:, 0, 0],
                           torch.arange(4.0))


def test_tensorboard_on_full_disk_raises_one_line(tmp_path, monkeypatch):
    """Accelerate's TensorBoard tracker on a full disk: an OutOfSpaceError at a log call, no hang,
    and no traceback from TensorBoard's writer thread."""
    from accelerate.tracking import TensorBoardTracker

    printed = []  # what would reach the default thread hook, which prints a traceback
    monkeypatch.setattr(threading, "excepthook", printed.append)

    with tmpfs(tmp_path / "fs", "256k") as fs:
        run_dir = fs / "run"
        tracker = TensorBoardTracker("tensorboard", str(run_dir))
        tracker.start()  # what Accelerator.init_trackers does
        acc = type("Acc", (), {"log": lambda self, values, step: tracker.log(values, step=step)})()
        runlog.log(acc, run_dir, {"train/loss": 1.0}, step=0)
        fill(fs)
        with pytest.raises(OutOfSpaceError) as info:
            for step in range(1, 10_000):
                runlog.log(acc, run_dir, {"train/loss": float(step)}, step=step)
        assert str(info.value) == FULL.format(fs=fs, what=f"TensorBoard events in {run_dir / 'tensorboard'}")
        assert printed == []


# ---- a training run on a filesystem that fills ---------------------------------------------------

@needs_fmnist
@pytest.mark.slow
def test_run_on_full_disk_stops_cleanly_and_resumes_exactly(tmp_path, short_run):
    """Checkpoints every 16 steps (keep 2) on a filesystem of 2.5 checkpoints (the uninterrupted run's are the
    size): the third (step 48, before the epoch's end at 64) does not fit. The run must exit 2 with one
    line, leave no temporary, keep steps 16 and 32 whole, and after the filesystem grows, resume to the
    weights of an uninterrupted run."""
    args = ["train", RECIPE, *SHORT, "train.checkpoint_every_steps=16", "train.keep_checkpoints=2"]
    checkpoint = sum(f.stat().st_size for f in complete_checkpoints(short_run)[-1].rglob("*") if f.is_file())
    with tmpfs(tmp_path / "fs", str(int(2.5 * checkpoint))) as fs:
        run_dir = fs / NAME
        failed = run_cli(*args, f"output_dir={fs}")
        assert failed.returncode == 2, failed.stderr[-3000:]
        what = f"checkpoint {run_dir / 'checkpoints' / 'step_000000048'}"
        assert failed.stderr.strip().splitlines()[-1] == "error: " + FULL.format(fs=fs, what=what)
        assert "Traceback" not in failed.stderr
        assert [p for p in run_dir.rglob("*") if ".tmp" in p.name] == []
        kept = complete_checkpoints(run_dir)
        assert [p.name for p in kept] == ["step_000000016", "step_000000032"]
        for ckpt in kept:  # whole: every file parses
            assert load_file(str(ckpt / "model.safetensors"))
            assert torch.load(ckpt / "optimizer.bin", weights_only=False)["state"]

        subprocess.run(["mount", "-o", f"remount,size={8 * checkpoint}", str(fs)], check=True)
        resumed = run_cli(*args, f"output_dir={fs}", "train.resume=auto")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {kept[-1]}" in resumed.stdout + resumed.stderr
        got, want = load_file(str(run_dir / "student.safetensors")), load_file(str(short_run / "student.safetensors"))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ from the uninterrupted run"
