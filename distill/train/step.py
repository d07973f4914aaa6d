"""The training step: one function, run eagerly through Accelerate or captured as a CUDA graph.

`TrainStep` is augment -> student -> teacher logits -> loss -> backward -> clip -> update on one
micro-batch. What differs between the two ways of running it is passed in as hooks:

- eager (`accelerate_hooks`): the prepared student and optimizer, `accelerator.backward` (fp16
  scaling, gradient accumulation) and `clip_grad_norm_` on the update's micro-batch only;
- graphed (`graph_hooks`): the bare module and optimizer, plain `backward`, and autocast with its
  weight-cast cache off (a cache inside a graph would hold stale casts).

Either way the loss runs in fp32: the step casts the student's outputs up after the forward, as
Accelerate's prepared model already does on the eager path and the bare graphed model does not.

The loop calls both the same way: `step(images, labels, index, salt, mix, cached_logits)`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from accelerate.utils import convert_to_fp32


@dataclass
class StepHooks:
    autocast: Callable  # () -> context manager around the forwards
    backward: Callable  # (loss) -> None
    clip: Callable  # () -> None; clips the gradients when the recipe asks for it
    skip_nonfinite: Optional[Callable] = None  # (loss) -> True to skip this step (all ranks agree)
    grads_to_none: bool = True  # False keeps gradient tensors at fixed addresses (CUDA graphs)


def accelerate_hooks(accelerator, model, clip_grad: Optional[float], skip_nonfinite=None) -> StepHooks:
    def clip():
        if clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad)

    return StepHooks(accelerator.autocast, accelerator.backward, clip, skip_nonfinite)


def graph_hooks(model, clip_grad: Optional[float], amp_dtype: Optional[torch.dtype],
                device_type: str = "cuda") -> StepHooks:
    """Hooks for the bare module; `device_type` is autocast's ("cpu" lets tests run the same step)."""
    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, amp_dtype, cache_enabled=False)

    def clip():
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad, foreach=True)

    return StepHooks(autocast, lambda loss: loss.backward(), clip, None, grads_to_none=False)


class TrainStep:
    """One micro-batch of training; returns (loss terms, teacher output), or None if skipped.

    Args:
        model: the module that trains (prepared by Accelerate when eager, bare when graphed).
        augment: `distill.data.augment.BatchAugment`; views and Mixup/CutMix from (salt, mix).
        criterion: the run's `distill.methods.Method`, returning a dict of terms.
        teacher: the frozen teacher, or None; used when no cached logits are given.
    """

    def __init__(self, model, augment, criterion, teacher, optimizer, hooks: StepHooks):
        self.model, self.augment, self.criterion = model, augment, criterion
        self.teacher, self.optimizer, self.hooks = teacher, optimizer, hooks

    def __call__(self, images, labels, index, salt, mix, cached_logits=None):
        h = self.hooks
        x, targets = self.augment.apply(images, labels, index, salt, mix)
        with h.autocast():
            outputs = self.model(x)
            teacher_out = cached_logits  # logits, or what the method's teacher returns (feature: features)
            if teacher_out is None and self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.teacher(x)
        # every loss term in fp32 (a bf16 log_softmax is off by ~0.3%); teacher_out keeps its dtype,
        # since it is returned for the logit cache and a replay must match it exactly (methods cast it)
        # a method that keeps per-sample state (CRD's memory bank) is told which images it sees: the view
        # id modulo the split's size (`distill.data.loader`: repeated views of an image share its index)
        wants = getattr(self.criterion, "needs_index", False)  # a bare loss module (tests) takes no index
        extra = {"index": index % self.criterion.num_samples} if wants else {}
        terms = self.criterion(convert_to_fp32(outputs), targets, teacher_out, **extra)
        if h.skip_nonfinite is not None and h.skip_nonfinite(terms["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        h.backward(terms["loss"])
        h.clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=h.grads_to_none)
        return {k: v.detach() for k, v in terms.items()}, teacher_out
