"""Stopping a run on request: SIGTERM (a scheduler's preemption) asks for a checkpoint and a clean exit.

The signal only sets a flag; the loop stops at the next checkpoint position that every process
agrees on, so a multi-process run never leaves ranks waiting in different collectives.
"""
from __future__ import annotations

import signal

import torch


class Preempted(Exception):
    """The run stopped on request after writing a checkpoint. The CLI prints how to resume, exits 0."""


class StopRequest:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested = False  # a signal arrived in this process
        self.agreed = False  # all processes know: stop at this step
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def poll(self, at_sync_point: bool) -> bool:
        """Whether to stop now. With several processes they agree by a collective, so only at
        `at_sync_point` (steps where every rank is known to be)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            self.agreed = self.requested
        elif at_sync_point:
            flag = torch.tensor(float(self.requested), device=acc.device)
            self.agreed = acc.reduce(flag, "max").item() > 0
        return self.agreed
