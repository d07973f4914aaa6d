"""Yardsticks for `distill bench --reference`: the same training steps done two other ways.

- `ReferenceLoop`: a loop written the common way: PIL images through torchvision transforms
  (RandomCrop with padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with
  workers, timm's `VisionTransformer` of the student's dimensions, AdamW, label-smoothed CE, fp32.
- `CeilingLoop`: the student's training steps (its precision, fused AdamW, `torch.compile` when the
  recipe asks for it) on one batch already in memory: no data path at all. No loop that feeds real data can beat it by much.
Both keep their model and optimizer between calls, so that `distill.commands.bench` can interleave short
timed blocks of them with the framework's; `timed(steps, warmup)` returns seconds, measured
between two device synchronisations like the framework's own.
"""
from __future__ import annotations

import itertools
import time

import torch
import torchvision.transforms as T
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from distill.config import Config
from distill.data.sources import load_split
from distill.models import build_student
from distill.train.timing import sync


class _PILDataset(Dataset):
    def __init__(self, split, transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform
        self.mode = "L" if split.in_chans == 1 else "RGB"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i].permute(1, 2, 0).squeeze(-1).numpy()  # (H, W[, C]) uint8
        return self.transform(Image.fromarray(img, self.mode)), int(self.labels[i])


class _StepLoop:
    """`model` trained with AdamW on label-smoothed CE; `_timed` steps it on an iterator of batches."""

    def __init__(self, model, smoothing: float, device, amp=None, fused: bool = False):
        self.model, self.device, self.amp = model.to(device).train(), device, amp
        self.opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05, fused=fused)
        self.loss_fn = LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()

    def _step(self, x, y):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
            loss = self.loss_fn(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _timed(self, batches, steps: int, warmup: int) -> float:
        for x, y in itertools.islice(batches, warmup):
            self._step(x, y)
        sync(self.device)
        t0 = time.perf_counter()
        for x, y in itertools.islice(batches, steps):
            self._step(x, y)
        sync(self.device)
        return time.perf_counter() - t0


class ReferenceLoop(_StepLoop):
    def __init__(self, cfg: Config, device, num_workers: int = 2):
        d = cfg.data
        split = load_split(d, train=True)
        transform = T.Compose([T.RandomCrop(d.img_size, padding=d.crop_padding), T.RandomHorizontalFlip(),
                               T.ToTensor(), T.Normalize(split.mean, split.std)])
        self.dataset, self.batch_size, self.num_workers = _PILDataset(split, transform), d.batch_size, num_workers
        student = build_student(cfg.student, split.num_classes, split.in_chans, d.img_size)
        model = VisionTransformer(img_size=d.img_size, patch_size=student.patch_embed.patch_size,
                                  in_chans=split.in_chans, num_classes=split.num_classes, embed_dim=student.embed_dim,
                                  depth=len(student.blocks), num_heads=student.blocks[0].attn.num_heads)
        super().__init__(model, d.label_smoothing, device)

    def timed(self, steps: int, warmup: int) -> float:
        # A fresh loader per block: its workers start during the untimed warm-up and are joined
        # when the block ends, so they never prefetch on CPU time that another loop is timing.
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        try:
            return self._timed(batches, steps, warmup)
        finally:
            if hasattr(batches, "_shutdown_workers"):
                batches._shutdown_workers()


class CeilingLoop(_StepLoop):
    """The framework's own model, compiled or not, precision (`amp` dtype) and fused AdamW, minus the data path."""

    def __init__(self, cfg: Config, device, amp=None):
        d = cfg.data
        split = load_split(d, train=True)
        model = build_student(cfg.student, split.num_classes, split.in_chans, d.img_size)
        if cfg.train.compile:
            model = torch.compile(model)
        self.batch = (torch.randn(d.batch_size, split.in_chans, d.img_size, d.img_size, device=device),
                      torch.randint(0, split.num_classes, (d.batch_size,), device=device))
        super().__init__(model, d.label_smoothing, device, amp, fused=True)

    def timed(self, steps: int, warmup: int) -> float:
        return self._timed(itertools.repeat(self.batch), steps, warmup)
