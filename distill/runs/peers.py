"""A lost process: the survivors' one line, and the launcher's report of who ended first.

A process that dies ends the whole job: torchrun notices a dead worker on its machine within a
second and stops the others; on other machines the survivors notice at their next collective, at
once if the dead machine's connections were reset, else after `train.dist_timeout_s`. Then the
surviving processes print one line (`lost_peer_message`) instead of a communication traceback,
and the launcher prints one line (`launcher_report`): launch.sh runs torchrun or `accelerate
launch` through `launch` here, which catches their failure instead of printing their table.
"""
from __future__ import annotations

import logging
import re
import socket
import sys
from pathlib import Path
from typing import Optional

import torch

from distill.errors import USAGE_ERRORS
from distill.runs.launcher import end_with_parent


# Communication failures of a collective whose peer is gone: gloo's and NCCL's words for it.
# gloo's timeout reads "Application timeout caused pair closure" when it fires inside the backward
# pass (the DDP reducer's all-reduce), "Timed out waiting ..." elsewhere.
_LOST_PEER = re.compile(r"Connection (reset|closed|refused)|Broken pipe|timed out|timeout caused pair closure|"
                        r"NCCL communicator was aborted|ProcessGroup.*(abort|timeout)", re.I)


def lost_peer_message(e: BaseException) -> Optional[str]:
    """One line for a collective that failed because another process died or stalled, else None."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return None
    text = str(e)
    if not (isinstance(e, torch.distributed.DistError) or (isinstance(e, RuntimeError) and _LOST_PEER.search(text))):
        return None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    first = re.sub(r"^\[[^\]]*\] ", "", first)[:160]  # drop gloo's source-file prefix
    return (f"rank {torch.distributed.get_rank()} lost contact with the other processes ({first}); another "
            "process or machine died or stalled, so the job stops; see the launcher's report")


# ---------------------------------------------------------------------------- the launcher's report

def first_failure(e) -> dict:
    """rank, host, exit code and signal of the process that ended first, from torchrun's ChildFailedError."""
    rank, failure = e.get_first_failure()
    return {"rank": rank, "exitcode": failure.exitcode, "host": socket.getfqdn(),
            "signal": failure.signal_name() if failure.exitcode < 0 else None}


def launcher_report(who: str, recipe: str, overrides) -> str:
    """The one line that ends a failed job: who ended first, and where to resume from."""
    # Imported here: the launcher process (`launch`) stays as light as torchrun itself, which
    # matters on a busy machine, where importing the data stack alone takes seconds.
    from distill.recipe import load_config
    from distill.runs.checkpoint import latest_checkpoint
    try:
        cfg = load_config(recipe, [o for o in overrides if o != "train.resume=auto"])
        found = latest_checkpoint(Path(cfg.output_dir) / cfg.name)
    except Exception:  # noqa: BLE001  (the report must never hide the failure it reports)
        found = None
    where = f"the last complete checkpoint is {found}" if found else "no checkpoint was written yet"
    return f"{who}; the job stopped and {where}. Resume: the same command with train.resume=auto"


def who_ended(cause: dict) -> str:
    """"rank R on HOST ended first (SIGNAL or exit status N)", from `first_failure`."""
    how = cause["signal"] or f"exit status {cause['exitcode']}"
    return f"rank {cause['rank']} on {cause['host']} ended first ({how})"


def launch(which: str, argv) -> int:
    """Run `torchrun` or `accelerate launch` in this process, as launch.sh does, and end a failed
    job in one line instead of their failure table and traceback.

    A process that stopped on a user error (exit status 2) has printed the job's one line itself
    (distill/runs/launcher.py), so the launcher adds nothing, not even a resume hint."""
    end_with_parent()  # launch.sh killed: this launcher, and through it the job, ends too
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    if which == "torchrun":
        from torch.distributed.run import get_args_parser, run
        args = get_args_parser().parse_args(argv)
    else:
        from accelerate.commands.launch import launch_command as run
        from accelerate.commands.launch import launch_command_parser
        args = launch_command_parser().parse_args(argv)
    for name in list(logging.root.manager.loggerDict):  # torchrun's own lines on a failure ("Sending process ...")
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        if any(f.exitcode == USAGE_ERRORS for f in e.failures.values()):
            return USAGE_ERRORS
        _, recipe, *overrides = args.training_script_args  # -m distill train RECIPE [key=value ...]
        print(f"error: {launcher_report(who_ended(first_failure(e)), recipe, overrides)}", file=sys.stderr)
        return 1
    except SignalException as e:  # SIGTERM (preemption), passed on: the processes stop and say so themselves
        return 128 + e.sigval
    return 0


if __name__ == "__main__":
    # python -m distill.runs.peers torchrun|accelerate LAUNCHER_ARGS -m distill train RECIPE [key=value ...]
    # python -m distill.runs.peers killed RECIPE [key=value ...]   (launch.sh, when `kill -9` ended the launcher)
    if sys.argv[1] == "killed":
        who = "the launcher was killed (SIGKILL) and its training processes with it"
        print(f"error: {launcher_report(who, sys.argv[2], sys.argv[3:])}", file=sys.stderr)
        sys.exit(1)
    sys.exit(launch(sys.argv[1], sys.argv[2:]))
