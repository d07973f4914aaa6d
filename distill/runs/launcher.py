"""The job a launcher started, as each of its processes sees it; processes that end with their launcher;
a run started by `distill study` that hears its stop requests (`run_passing_stops`).

`torchrun`, `accelerate launch` and `launch.sh` (which runs one of the two) tell each process the
size of the job in its environment (WORLD_SIZE, LOCAL_RANK, ...). Accelerate reads the same
variables, but on a machine without a GPU it starts its gloo process group only when told to stay
on the CPU: without that, each process of a 2-process `torchrun` job ran as a job of its own on one
run folder. `accelerate_cpu` tells it; `check_processes` refuses in one line, before the run folder
is touched, a job whose size is not the one its launcher set.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from datetime import timedelta
from typing import List, Optional, Tuple

from distill.errors import ConfigError

# The job's size: torchrun's variable, then MPI's (the ones Accelerate reads too).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> Optional[int]:
    """How many processes the launcher says the job has; None where no launcher said."""
    found = next((os.environ[v] for v in WORLD_SIZE_VARS if os.environ.get(v, "").isdigit()), None)
    return int(found) if found is not None else None


def launcher() -> Optional[str]:
    """The launcher that started this process, by the variables it sets, or None."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        return "torchrun"
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ:  # set by every `accelerate launch`, whatever its launcher
        return "accelerate launch"
    return None


def accelerate_cpu() -> bool:
    """Accelerate's `cpu`: asked for (ACCELERATE_USE_CPU, `accelerate launch --cpu`), or a job of
    several processes on a machine without a GPU, which then runs over gloo as launch.sh's does."""
    import torch  # here, not at the top: the CLI reads this module before any command (see distill/cli.py)
    from accelerate.utils import parse_flag_from_env

    several = (launched_processes() or 1) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())


def check_processes(num_processes: int) -> None:
    """Refuse a job whose processes are not the ones its launcher started (ConfigError, one line)."""
    launched = launched_processes()
    if launched is None and launcher() == "accelerate launch" and "MASTER_ADDR" in os.environ:
        # Its one-process launcher sets MASTER_ADDR only when told of several processes or machines.
        raise ConfigError("`accelerate launch` without --multi_gpu (e.g. --cpu) starts one process whatever "
                          "--num_processes says; for N CPU processes run `NPROC=N ./launch.sh RECIPE ...` or "
                          "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m distill train "
                          "RECIPE ...` (for one process, unset MASTER_ADDR)")
    if launched is not None and launched != num_processes:
        raise ConfigError(f"the launcher started a job of {launched} processes (WORLD_SIZE={launched}) but this process "
                          f"sees {num_processes}: their process group did not come up; on a machine without a GPU set "
                          "ACCELERATE_USE_CPU=1, or start the job with launch.sh")


def end_with_launcher() -> None:
    """Under a launcher, die with it: see `end_with_parent`. A plain `python -m distill` stays the shell's."""
    if launcher() is not None:
        end_with_parent()


def end_with_parent() -> None:
    """Have Linux kill this process (SIGKILL) when its parent dies, as if the parent had ended the job.

    A launcher killed with `kill -9` cannot stop its processes, and they would finish the run on
    their own, after the launcher reported the job stopped: resuming it then puts two jobs on one
    run folder. prctl(PR_SET_PDEATHSIG) through ctypes, because neither Python nor psutil exposes
    it; SIGKILL, not SIGTERM, since a graceful stop would write a checkpoint newer than the one the
    launcher reported. Elsewhere than Linux, nothing."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl: no signal will come, so send it
        os.kill(os.getpid(), signal.SIGKILL)


def _job_store():
    """A client of the store torchrun's agent serves for the job (it outlives the job's processes), or None."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or (launched_processes() or 1) < 2:
        return None
    import torch

    try:  # a short timeout: never wait long on a launcher that is gone
        return torch.distributed.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                                          timeout=timedelta(seconds=5))
    except Exception:  # noqa: BLE001  (no store: every process speaks for itself)
        return None


def _reported() -> str:
    """The key, in the job's store, of "a process printed the job's error" (per torchrun restart)."""
    return f"distill/user_error_reported/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def first_to_report() -> bool:
    """Whether this process prints the job's user error: one line for the job, not one per process.

    Under torchrun, the first process to claim it in the job's store; elsewhere local rank 0 (an
    error every process meets alike)."""
    store = _job_store()
    if store is None:
        return os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        return store.add(_reported(), 1) == 1
    except Exception:  # noqa: BLE001  (a store that is gone: better two lines than none)
        return True


def peer_reported_error() -> bool:
    """Whether another process of the job stopped on a user error and said so (see first_to_report)."""
    store = _job_store()
    try:
        return store is not None and store.check([_reported()])
    except Exception:  # noqa: BLE001
        return False


def run_passing_stops(cmd: List[str]) -> Tuple[int, Optional[int]]:
    """Run one `distill train` (or launch.sh) to its end, as `distill study` does; returns its exit status
    and the stop signal that reached this process meanwhile (None if none). SIGTERM and SIGINT are passed
    on to the run, which writes a checkpoint at its next step and exits (runs/signals.py: a terminal's
    Ctrl-C reaches both processes, and the run counts the two copies as one keypress), and this waits for
    it. Written out because `subprocess.run` kills the run 0.25 s after a Ctrl-C, before its checkpoint,
    and a SIGTERM to the caller alone would leave the run training on, orphaned."""
    proc = subprocess.Popen(cmd)
    got = []

    def pass_on(signum, frame):
        got.append(signum)
        proc.send_signal(signum)

    before = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    return rc, (got[0] if got else None)
