"""Yardsticks for `distill bench --reference`: the same training steps done two other ways.

- `reference_loop`: a loop written the common way: PIL images through torchvision transforms
  (RandomCrop with padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with
  workers, timm's `VisionTransformer` of the student's dimensions, AdamW, label-smoothed CE.
- `compute_ceiling`: the student's training steps on one batch already in memory, normalised:
  no data path at all. No loop that feeds real data can beat it by much.
Both use the recipe's batch size and the same timing method as `distill.bench`.
"""
from __future__ import annotations

import time

import torch
import torchvision.transforms as T
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from distill.build import build_student
from distill.config import Config
from distill.datasets import load_split


class _PILDataset(Dataset):
    def __init__(self, split, transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform
        self.mode = "L" if split.in_chans == 1 else "RGB"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i].permute(1, 2, 0).squeeze(-1).numpy()  # (H, W[, C]) uint8
        return self.transform(Image.fromarray(img, self.mode)), int(self.labels[i])


def _train_steps(model, batches, steps: int, warmup: int, smoothing: float, device, amp=None,
                 fused: bool = False) -> float:
    """Images per second over `steps` timed steps after `warmup` untimed ones."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05, fused=fused)
    loss_fn = LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()
    model.train()
    n_img, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, n_img = time.perf_counter(), 0
        if i == warmup + steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, amp, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_img += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n_img / (time.perf_counter() - t0)


def reference_loop(cfg: Config, steps: int, warmup: int, device, num_workers: int = 2) -> float:
    d = cfg.data
    split = load_split(d, train=True)
    transform = T.Compose([T.RandomCrop(d.img_size, padding=d.crop_padding), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(split.mean, split.std)])
    loader = DataLoader(_PILDataset(split, transform), batch_size=d.batch_size, shuffle=True, drop_last=True,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    student = build_student(cfg.student, split.num_classes, split.in_chans, d.img_size)
    model = VisionTransformer(img_size=d.img_size, patch_size=student.patch_embed.patch_size,
                              in_chans=split.in_chans, num_classes=split.num_classes, embed_dim=student.embed_dim,
                              depth=len(student.blocks), num_heads=student.blocks[0].attn.num_heads).to(device)
    return _train_steps(model, loader, steps, warmup, d.label_smoothing, device)


def compute_ceiling(cfg: Config, steps: int, warmup: int, device, amp=None) -> float:
    """The framework's own model, precision (`amp` dtype) and fused AdamW, minus the data path."""
    d = cfg.data
    split = load_split(d, train=True)
    model = build_student(cfg.student, split.num_classes, split.in_chans, d.img_size).to(device)
    x = torch.randn(d.batch_size, split.in_chans, d.img_size, d.img_size, device=device)
    y = torch.randint(0, split.num_classes, (d.batch_size,), device=device)
    return _train_steps(model, iter(lambda: (x, y), None), steps, warmup, d.label_smoothing, device, amp, fused=True)
