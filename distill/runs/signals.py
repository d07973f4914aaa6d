"""Stop requests a run survives: SIGTERM (preemption, `scancel`) and Ctrl-C.

A stop request only sets a flag; the loop stops at the next checkpoint position that every
process agrees on, so a multi-process run never leaves ranks waiting in different collectives.
Ctrl-C reaches every process of a job: the terminal sends it to a single-process run, and torchrun
forwards it to its workers, then waits `--shutdown-timeout` (30 s) before killing them. A second
Ctrl-C, a second or more after the first (so not the terminal's and torchrun's copies of one
keypress), stops at once.
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch

SECOND_PRESS_S = 1.0  # a second SIGINT within this time is the same keypress, forwarded


class Preempted(Exception):
    """The run stopped on request after writing a checkpoint. The CLI prints how to resume, exits 0."""


class StopRequest:
    """SIGTERM and SIGINT ask for a checkpoint and a clean exit; `poll` says when all processes agree."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested: Optional[str] = None  # the name of the signal that arrived in this process
        self.agreed = False  # all processes know: stop at this step
        self._first_sigint = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_sigint is not None and now - self._first_sigint > SECOND_PRESS_S:
                raise KeyboardInterrupt  # the second Ctrl-C: stop at once
            self._first_sigint = self._first_sigint or now
        self.requested = self.requested or name

    def poll(self, at_sync_point: bool) -> bool:
        """Whether to stop now. With several processes they agree by a collective, so only at
        `at_sync_point` (steps where every rank is known to be)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            self.agreed = self.requested is not None
        elif at_sync_point:
            flag = torch.tensor(float(self.requested is not None), device=acc.device)
            self.agreed = acc.reduce(flag, "max").item() > 0
        return self.agreed
