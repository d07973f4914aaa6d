"""Clocks for the GPU and the CPU alike: device syncs, timed blocks, peak memory, interval rates.

Shared by the trainer's progress log, `distill bench` and its yardsticks (`distill.commands.bench_reference`),
so that every figure is measured the same way.
"""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock times it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], object], n: int, device: torch.device) -> float:
    """Seconds for `fn(0) ... fn(n-1)`, between two device syncs."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    sync(device)
    return time.perf_counter() - t0


def peak_memory_mb(device: torch.device) -> float:
    """The CUDA allocator's peak, or the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class IntervalRate:
    """Images/s over the steps since the last reading, whatever their number.

    The progress log reads it every `log_every` steps and at the end of an epoch, where fewer steps
    may have passed (and after a mid-epoch resume), so the count is kept, not assumed.
    """

    def __init__(self, images_per_step: float, step: int = 0, clock: Callable[[], float] = time.perf_counter):
        self.images_per_step, self.clock = images_per_step, clock
        self.step, self.t = step, clock()

    def read(self, step: int) -> float:
        """Images/s from the last reading up to `step` (steps done so far in the epoch)."""
        now = self.clock()
        rate = (step - self.step) * self.images_per_step / max(now - self.t, 1e-9)
        self.step, self.t = step, now
        return rate
