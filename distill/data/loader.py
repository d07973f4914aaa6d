"""Batches of (images, labels, view ids), sharded so N processes see what one does.

Each epoch has one global order, a permutation seeded by (seed, epoch). Global batch `s` is
`order[s*G : (s+1)*G]` with G = world_size x batch_size, and process `r` takes the `r`-th
contiguous slice of it. One process with batch N*B therefore sees exactly the samples that N
processes with batch B see together, step by step; with per-sample augmentation
(`distill.data.seeds`) the crops and flips agree too. Accelerate's own loader sharding would
re-split a loader per process, so the loaders here are not passed through `prepare`.

Repeated augmentation (`data.aug_repeats` = r, DeiT's RASampler) lives in the same global order:
each image of the permutation appears r times in a row and the epoch keeps its length, so an epoch
holds N / r distinct images. The view id `repeat x N + index` names each copy; augmentation hashes
the view id, so the copies differ, and `view % N` is the image. With r = 1 the view id is the index.

Two paths yield the same batches: sets that fit in memory sit whole on the training device and
are indexed there; image folders go through a DataLoader with workers that decode the files (and,
for `data.crop=rrc`, run the per-sample transforms of `distill.data.transforms`).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from distill.data.seeds import epoch_views
from distill.errors import DataError, UserError

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 or float (B,C,H,W), int64 (B,), int64 (B,)


def default_workers(requested: Optional[int]) -> int:
    """`data.num_workers`, or when unset min(4, the cores this process may run on): more workers than
    cores only contend (and torch's DataLoader warns about them)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores)


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """A contiguous, non-overlapping slice of the test set; together the slices count each sample once."""
    per = math.ceil(num_samples / world_size)
    return range(min(rank * per, num_samples), min((rank + 1) * per, num_samples))


class ShardedBatches(Sampler):
    """Index batches of one process for one epoch, from step `start_step` on (for resume)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 repeats: int = 1):
        self.num_samples, self.batch_size, self.repeats = num_samples, batch_size, repeats
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.start_step = 0, 0
        if self.steps_per_epoch == 0:
            raise DataError(f"the train split has {num_samples} images, fewer than one global batch "
                            f"({batch_size} x {world_size} processes): an epoch would have no step; lower "
                            f"data.batch_size (or raise data.train_subset)")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)  # the last partial batch is dropped

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = epoch_views(self.num_samples, self.seed, self.epoch, self.repeats)
        G, B = self.batch_size * self.world_size, self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * G + self.rank * B
            yield order[lo:lo + B]


class DeviceBatches:
    """The in-memory path: the whole uint8 split in `storage` (the training device by default),
    batches gathered there and handed out on `device`."""

    def __init__(self, split, sampler: Optional[ShardedBatches], device, batch_size: int = 0, storage=None):
        storage = torch.device(storage or device)
        self.images = split.images.to(storage)
        self.labels = split.labels.to(storage)
        self.sampler, self.batch_size, self.device = sampler, batch_size, torch.device(device)

    def _gather(self, idx: torch.Tensor) -> Batch:
        at = idx.to(self.images.device, non_blocking=True) % len(self.labels)  # view id -> image
        batch = (self.images[at], self.labels[at], idx)
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def __iter__(self) -> Iterator[Batch]:
        for idx in self.sampler:
            yield self._gather(idx)

    def __len__(self) -> int:
        return len(self.sampler)

    def iter_range(self, indices: range) -> Iterator[Batch]:
        """Unaugmented, ordered batches over `indices` (evaluation)."""
        for lo in range(indices.start, indices.stop, self.batch_size):
            yield self._gather(torch.arange(lo, min(lo + self.batch_size, indices.stop)))


class _Items(Dataset):
    """What the workers run. Training keys are (view id, epoch): a dataset with `keyed = True`
    (`distill.data.transforms.TrainViews`) takes them whole, any other gets `view % N` and the view id is
    put back in the item. A UserError (a corrupt file, ...) is returned, not raised: DataLoader
    re-raises worker errors with the worker's traceback inside the message, and the CLI owes the
    user one line."""

    def __init__(self, dataset):
        self.dataset, self.keyed = dataset, getattr(dataset, "keyed", False)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            if not isinstance(key, tuple) or self.keyed:
                return self.dataset[key]
            image, label, _ = self.dataset[key[0] % len(self.dataset)]
            return image, label, key[0]
        except UserError as e:
            return e


class _EpochKeys(Sampler):
    """The sampler's index batches as lists of (view id, epoch): persistent workers hold copies of
    the dataset, so the epoch travels with each key."""

    def __init__(self, sampler: ShardedBatches):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            yield [(v, self.sampler.epoch) for v in idx.tolist()]


def _collate(items, stack=default_collate):
    """torch's collate (in a worker it stacks straight into shared memory: one copy less), or the
    dataset's own (`collate`, for items of different sizes), or the error."""
    failed = next((x for x in items if isinstance(x, UserError)), None)
    if failed is not None:
        return failed
    return tuple(stack(items))


class LoaderBatches:
    """The large-dataset path: a DataLoader whose workers decode files into batches (uint8, or
    normalised float views under `data.crop=rrc`, or uint8 views and their augmentation draws under
    `data.augment_on=device`, which `on_device` turns into views on the device)."""

    def __init__(self, dataset, sampler: Optional[ShardedBatches], device, num_workers: Optional[int],
                 batch_size: int = 0, on_device=None):
        self.dataset, self.sampler, self.device = _Items(dataset), sampler, device
        self.on_device = on_device  # host batch -> (views, labels, ids) on the device (`data.augment_on=device`)
        num_workers = default_workers(num_workers)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin = torch.device(device).type == "cuda"
        self.loader = None
        collate = functools.partial(_collate, stack=getattr(dataset, "collate", default_collate))
        if sampler is not None:
            self.loader = DataLoader(self.dataset, batch_sampler=_EpochKeys(sampler), num_workers=num_workers,
                                     collate_fn=collate, pin_memory=self.pin,
                                     persistent_workers=num_workers > 0)

    def _to_device(self, batch) -> Batch:
        if isinstance(batch, UserError):
            raise batch
        return tuple(t.to(self.device, non_blocking=self.pin) for t in batch)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if self.on_device is None:
                yield self._to_device(batch)
            elif isinstance(batch, UserError):
                raise batch
            else:  # `on_device` takes the batch on the host (pinned for a GPU): it reads the draws there
                yield self.on_device(*batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def iter_range(self, indices: range) -> Iterator[Batch]:
        subset = torch.utils.data.Subset(self.dataset, list(indices))
        loader = DataLoader(subset, batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=_collate, pin_memory=self.pin)
        for batch in loader:
            yield self._to_device(batch)
