"""The one source of the teacher's logits in a training step: live, recorded, or replayed.

- live: no cache; the step runs the teacher on its views.
- record: `distill.cache=true` and the epoch is not cached yet; the step runs the teacher and the
  logits it produced are written into the cache when the epoch is whole.
- replay: the epoch is cached; the step receives the logits as an input and never runs the
  teacher, except on the first step of the epoch, where a sample of views is checked live.

The step asks the same two questions in every mode (`cached(step, views)` before, `observe(step,
logits)` after), so the eager loop and the CUDA graph treat the teacher alike.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from distill.train.cache import CHECK_SAMPLES, LogitCache


class TeacherLogits:
    def __init__(self, teacher: Optional[torch.nn.Module], cache: Optional[LogitCache], autocast):
        """`autocast`: a context-manager factory for the teacher's forward in the replay check."""
        self.teacher, self.cache, self.autocast = teacher, cache, autocast
        self.mode = "none" if teacher is None else "live"
        self.epoch, self._check_pending = 0, False

    def start_epoch(self, epoch: int, start_step: int, device) -> None:
        self.epoch = epoch
        if self.cache is not None:
            replay = self.cache.start_epoch(epoch, start_step, device)
            self.mode, self._check_pending = ("replay", True) if replay else ("record", False)

    def cached(self, step: int, views: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
        """The step's replayed logits (B, K) (a top-k cache's reconstruction), or None when the step
        must run the teacher itself.

        `views()` gives the step's augmented batch; it is called once per replayed epoch, for the
        check (the teacher is in eval mode, so a sample's logits do not depend on the rest of the batch).
        """
        if self.mode != "replay":
            return None
        logits = self.cache.get(step)
        if self._check_pending:
            with torch.no_grad(), self.autocast():
                live = self.teacher(views()[:CHECK_SAMPLES])
            self.cache.check(step, live, f"epoch {self.epoch} step {step}")
            self._check_pending = False
        return logits

    def observe(self, step: int, logits: Optional[torch.Tensor]) -> None:
        """The logits the step used; kept when the epoch is being recorded."""
        if self.mode == "record":
            self.cache.put(step, logits)

    def views_run(self, epoch_views: int, world_size: int) -> int:
        """How many views the teacher ran on this epoch, over all processes: every view when it ran
        live or recorded, the check's few when it replayed, none without a teacher."""
        return {"none": 0, "replay": CHECK_SAMPLES * world_size}.get(self.mode, epoch_views)

    def end_epoch(self, epoch: int) -> None:
        if self.cache is not None:
            self.cache.end_epoch(epoch)
