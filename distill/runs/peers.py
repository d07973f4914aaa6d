"""A lost process: the survivors' one line, and the launcher's report of who ended first.

A process that dies ends the whole job: torchrun notices a dead worker on its machine within a
second and stops the others; on other machines the survivors notice at their next collective, at
once if the dead machine's connections were reset, else after `train.dist_timeout_s`. Then the
surviving processes print one line (`lost_peer_message`) instead of a communication traceback,
and `launch.sh` prints the launcher's one line (`python -m distill.runs.peers LOG RECIPE ...`).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import torch

from distill.config import load_config
from distill.runs.checkpoint import latest_checkpoint


# Communication failures of a collective whose peer is gone: gloo's and NCCL's words for it.
_LOST_PEER = re.compile(r"Connection (reset|closed|refused)|Broken pipe|timed out|"
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

def root_cause(log: str) -> Optional[dict]:
    """rank, host, exit code and signal of torchrun's 'Root Cause' entry in its stderr, or None."""
    block = log[log.rfind("Root Cause"):] if "Root Cause" in log else ""
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    if not rank:
        return None
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
    host = re.search(r"host\s*:\s*(\S+)", block)
    sig = re.search(r"\((SIG[A-Z]+)\)", block)
    return {"rank": int(rank.group(1)), "exitcode": int(code.group(1)) if code else None,
            "host": host.group(1) if host else "?", "signal": sig.group(1) if sig else None}


def launcher_report(log: str, recipe: str, overrides) -> str:
    """The one line `launch.sh` prints when the job failed: who died, and where to resume from."""
    cause = root_cause(log)
    if cause is None:
        who = "a process of the job failed"
    else:
        how = cause["signal"] or f"exit status {cause['exitcode']}"
        who = f"rank {cause['rank']} on {cause['host']} ended first ({how})"
    try:
        cfg = load_config(recipe, [o for o in overrides if o != "train.resume=auto"])
        found = latest_checkpoint(Path(cfg.output_dir) / cfg.name)
    except Exception:  # noqa: BLE001  (the report must never hide the failure it reports)
        found = None
    where = f"the last complete checkpoint is {found}" if found else "no checkpoint was written yet"
    return f"{who}; the job stopped and {where}. Resume: the same command with train.resume=auto"


if __name__ == "__main__":  # python -m distill.runs.peers TORCHRUN_LOG RECIPE [key=value ...]
    print(f"error: {launcher_report(Path(sys.argv[1]).read_text(errors='replace'), sys.argv[2], sys.argv[3:])}",
          file=sys.stderr)
