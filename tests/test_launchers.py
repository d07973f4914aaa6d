"""Every launcher a PyTorch user knows runs one 2-process job, the same one, or refuses in one line;
and the training processes end when their launcher is killed."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import PLAIN, ROOT, needs_fmnist
from distill.errors import ConfigError
from distill.runs.checkpoint import latest_checkpoint

NAME = "fashion_mnist_plain_tiny"
BIN = Path(sys.executable).parent
# 8 steps of 2 x 16 images in fp32, one thread per process: a whole 2-process job in ~30 s
TINY = ["data.train_subset=256", "data.test_subset=100", "data.batch_size=16", "data.cutmix_alpha=0",
        "train.epochs=1", "train.log_every=4", "train.warmup_epochs=0", "train.mixed_precision=no",
        "student.embed_dim=128", "student.depth=2", "student.num_heads=2"]  # the launch is the test, not the width
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable,
       "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, on any machine


def command(how: str, port: int, args) -> tuple:
    """The command line and environment that start a 2-process `distill train` with launcher `how`."""
    train = ["-m", "distill", "train", *args]
    env = {**os.environ, **ENV}
    if how == "launch.sh":
        return [str(ROOT / "launch.sh"), *args], {**env, "NPROC": "2", "MASTER_PORT": str(port)}
    if how == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), *train], env
    return [str(BIN / "accelerate"), "launch", *how.split()[2:], "--num_processes", "2",
            "--main_process_port", str(port), *train], env


def start(how: str, port: int, args) -> subprocess.Popen:
    cmd, env = command(how, port, args)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(how: str, port: int, args) -> subprocess.CompletedProcess:
    proc = start(how, port, args)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@needs_fmnist
def test_torchrun_and_accelerate_launch_match_launch_sh(tmp_path):
    """torchrun and `accelerate launch --multi_gpu` on a machine without a GPU: one 2-process gloo job
    each (before: two 1-process jobs on one run folder), with launch.sh's weights to the bit."""
    weights = {}
    for i, how in enumerate(["launch.sh", "torchrun", "accelerate launch --multi_gpu"]):
        t0 = time.time()
        res = run(how, 29621 + i, [PLAIN, f"output_dir={tmp_path / str(i)}", *TINY])
        run_dir = tmp_path / str(i) / NAME
        assert res.returncode == 0, (how, res.stderr[-3000:])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch"] == 32, how
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1, how  # one job: one line an epoch
        weights[how] = load_file(str(run_dir / "student.safetensors"))
        print(f"{how}: {time.time() - t0:.1f} s")
    ref = weights.pop("launch.sh")
    for how, w in weights.items():
        assert w.keys() == ref.keys()
        assert all((w[k] == ref[k]).all() for k in ref), f"{how} and launch.sh trained different weights"


@pytest.mark.slow
@needs_fmnist
def test_accelerate_launch_cpu_of_two_processes_is_refused(tmp_path):
    """`accelerate launch --cpu` starts one process whatever --num_processes says (before: a 1-process
    run, with no word): refused in one line before the run folder is made."""
    res = run("accelerate launch --cpu", 29631, [PLAIN, f"output_dir={tmp_path}", *TINY])
    ours = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode != 0 and len(ours) == 1 and "without --multi_gpu (e.g. --cpu)" in ours[0], res.stderr[-3000:]
    assert not (tmp_path / NAME).exists()  # accelerate's own traceback follows our line: its launcher's, not ours


@pytest.mark.slow
@needs_fmnist
def test_a_user_error_in_a_launched_job_is_one_line(tmp_path):
    """A missing teacher under `NPROC=2 launch.sh` (before: 44 lines, exit 1, a resume hint): the
    process's one line, exit 2, no resume hint, no run folder."""
    res = run("launch.sh", 29632, ["recipes/fashion_mnist/hard_tiny.yaml", f"output_dir={tmp_path}", *TINY,
                                   "teacher.checkpoint=/missing.pt"])
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
    assert res.stderr.startswith("error: teacher checkpoint /missing.pt not found") and "Resume" not in res.stderr
    assert not (tmp_path / NAME).exists()


def _trainers(proc: psutil.Process) -> list:
    """The `distill train` processes under `proc` (not a launcher, nor launch.sh's report)."""
    found = []
    for p in proc.children(recursive=True):
        try:
            if " -m distill train " in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by whoever adopted it
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("how", ["launch.sh", "torchrun"])
def test_training_processes_die_with_their_launcher(tmp_path, how):
    """kill -9 of torchrun (under launch.sh: of the launcher it runs) once training has started:
    before, both training processes went on and finished the run; now none is left within seconds."""
    args = [PLAIN, f"output_dir={tmp_path}", *TINY, "data.train_subset=4096", "train.checkpoint_every_steps=4"]
    proc, trainers = start(how, 29641 if how == "torchrun" else 29642, args), []
    try:
        deadline = time.time() + 300
        while latest_checkpoint(tmp_path / NAME) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert latest_checkpoint(tmp_path / NAME) is not None, "training never started"
        me = psutil.Process(proc.pid)
        runner = me if how == "torchrun" else next(p for p in me.children() if "python" in p.cmdline()[0])
        trainers = _trainers(runner)
        assert len(trainers) == 2, trainers
        runner.kill()
        t0 = time.time()
        while not all(_gone(p) for p in trainers) and time.time() - t0 < 10:
            time.sleep(0.1)
        left = [p.pid for p in trainers if not _gone(p)]
        print(f"{how}: launcher killed; training processes left after {time.time() - t0:.1f} s: {left}")
        assert not left, f"training processes {left} outlived their launcher"
        _, err = proc.communicate(timeout=120)
        if how == "launch.sh":
            assert err.strip().splitlines()[-1].startswith("error: the launcher was killed (SIGKILL)"), err[-2000:]
        assert not (tmp_path / NAME / "summary.json").exists()
    finally:
        for p in [proc, *trainers]:
            try:
                p.kill()
            except (ProcessLookupError, psutil.Error):
                pass


def test_a_job_of_another_size_than_its_launcher_set_is_refused(monkeypatch):
    """WORLD_SIZE=2 but a process group of 1 (it did not come up): one line, before anything is written."""
    from distill.runs import launcher
    for var in launcher.WORLD_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    launcher.check_processes(1)  # no launcher
    monkeypatch.setenv("WORLD_SIZE", "2")
    launcher.check_processes(2)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2.*sees 1"):
        launcher.check_processes(1)
    monkeypatch.delenv("WORLD_SIZE")  # `accelerate launch --cpu --num_processes 2`: one process, MASTER_ADDR set
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match="without --multi_gpu"):
        launcher.check_processes(1)


def test_several_processes_without_a_gpu_run_on_the_cpu(monkeypatch):
    """What Accelerate needs to start gloo on a machine without a GPU: cpu=True (before: not passed)."""
    from distill.runs import launcher
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launcher.accelerate_cpu()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launcher.accelerate_cpu()  # one process keeps Accelerate's own choice of device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launcher.accelerate_cpu()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert launcher.accelerate_cpu()


@pytest.mark.parametrize("text", [
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29591",
    "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms for recv operation",
    "Application timeout caused pair closure",  # gloo's timeout inside the DDP reducer's all-reduce (CI, stop 46)
], ids=["reset", "timed out", "in backward"])
def test_a_lost_peer_is_named_in_one_line_however_gloo_words_it(monkeypatch, text):
    """The survivors' words for a collective whose peer died or stalled: each gives the one line."""
    from distill.runs import peers
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    message = peers.lost_peer_message(RuntimeError(text))
    assert message is not None and message.startswith("rank 0 lost contact"), message
    assert "third_party" not in message
    assert peers.lost_peer_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
