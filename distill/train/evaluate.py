"""Evaluation: top-1/top-5 over a test split sharded across processes, each sample counted once."""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch


def _hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, as a 0-d tensor (no host sync)."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
    return (topk == labels[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, normalize, reduce=None,
             teacher: Optional[torch.nn.Module] = None, autocast=contextlib.nullcontext) -> dict:
    """Accuracy in percent of `model` (the unwrapped module) over this process's `batches`.

    A model with a distillation token is scored on its class head, its distillation head and
    their mean (`top1`/`top5` are the mean, the model's output at inference). `test_loss` is the
    mean cross-entropy of those logits against the labels (nats per image, no label smoothing). With `teacher`,
    also the share of samples where the student's prediction agrees with the teacher's.
    `reduce(tensor)` sums the counters over processes (e.g. `accelerator.reduce(t, "sum")`).
    """
    was_training = model.training
    model.eval()
    distilled = getattr(model, "distilled", False)
    sums = None
    for images, labels, _ in batches:
        x = normalize(images)
        with autocast():
            if distilled:
                cls, dist = model.forward_heads(x)
                logits = (cls + dist) / 2
            else:
                logits = model(x)
            t_logits = teacher(x) if teacher is not None else None
        logits = logits.float()
        nll = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")  # the test loss, summed
        # the batch size filled in on the device: `torch.tensor(n, device=...)` copies from the host and waits
        counts = [torch.full((), len(labels), device=x.device), _hits(logits, labels, 1), _hits(logits, labels, 5), nll]
        if distilled:
            counts += [_hits(cls.float(), labels, 1), _hits(dist.float(), labels, 1)]
        if t_logits is not None:
            counts.append((logits.argmax(1) == t_logits.argmax(1)).sum())
        step = torch.stack(counts).double()
        sums = step if sums is None else sums + step
    model.train(was_training)
    if sums is None:  # this process's shard is empty; it still has to join the reduction
        width = 4 + 2 * distilled + (teacher is not None)
        sums = torch.zeros(width, dtype=torch.float64, device=next(model.parameters()).device)
    if reduce is not None:
        sums = reduce(sums)
    n, top1, top5, nll, *rest = sums.tolist()
    pct = [100.0 * v / max(n, 1) for v in [top1, top5, *rest]]
    result = {"top1": pct[0], "top5": pct[1], "test_loss": nll / max(n, 1), "eval_samples": int(n)}
    if distilled:
        result.update(top1_cls=pct[2], top1_dist=pct[3])
    if teacher is not None:
        result["teacher_agreement"] = pct[-1]
    return result
