"""`distill bench RECIPE --data`: the input pipeline alone, beside the training step, and which bounds a run.

Four rates, images/s, each over `steps` batches after `warmup` untimed ones, on the recipe's own
data path (`distill.train.build.build_data`):

- `worker_img_per_s`: what one DataLoader worker hands over (a loader with `num_workers=1` over the
  same training views; read, decode and the workers' transforms, collation included): a worker's
  share, the figure that decides how many CPU cores a GPU needs.
- `device_aug_img_per_s`: the augmentation that runs on the training device, on uint8 batches the
  workers made (`data.augment_on=device`: RandAugment, normalisation, erasing; `pad`: crop, flip and
  normalisation); absent where the workers do everything.
- `data_img_per_s`: what the whole pipeline delivers with `data.num_workers` workers, the device
  augmentation included.
- `step_img_per_s`: the training step alone on batches fetched beforehand (views, forward, loss,
  backward, update).

`bound_by` names the slower of the pipeline and the step. Timings share the machine with nothing
else of ours: the workers of one loader are stopped before the next is timed.
"""
from __future__ import annotations

import time

import torch

from distill.data.loader import LoaderBatches
from distill.data.seeds import epoch_salt
from distill.train.build import decodes_on_device
from distill.train.timing import sync, timed


def _loader_rate(batches, steps: int, warmup: int, device, then=lambda b: b) -> float:
    """Images/s over `steps` batches of an iterator (each passed to `then`), after `warmup` batches
    (worker start-up) untimed."""
    it = iter(batches)
    for _ in range(warmup):
        then(next(it))
    sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        n += len(then(next(it))[1])  # labels: device-path crops travel as one flat buffer
    sync(device)
    return n / (time.perf_counter() - t0)


def data_rates(run, cfg, device, steps: int, warmup: int) -> dict:
    """The pipeline's rates (see the module docstring); `run` is a built `distill.train.build.Run`."""
    train = run.data.train_batches
    out, then = {}, (lambda b: b)
    if isinstance(train, LoaderBatches):
        one = LoaderBatches(train.dataset.dataset, train.sampler, device, 1)
        train.sampler.set_epoch(3)
        out["worker_img_per_s"] = _loader_rate(one, steps, min(warmup, 2), device)
        del one
        # the batches as `on_device` takes them: on the host, pinned for a GPU (an identity `on_device`)
        raw = LoaderBatches(train.dataset.dataset, train.sampler, device, train.num_workers, on_device=lambda *b: b)
        pool = [b for _, b in zip(range(4), raw)]
        del raw
        if train.on_device is not None:
            out["device_aug_img_per_s"] = _device_rate(lambda b: train.on_device(*b), pool, steps, device)
    else:  # in memory: the workers' share is nil, the device crops, flips and normalises
        pool = [b for _, b in zip(range(4), train)]
        salt = epoch_salt(run.data.aug_seed, 4)

        def then(b):
            return run.data.augment.views(b[0], b[2], salt), b[1]
        out["device_aug_img_per_s"] = _device_rate(then, pool, steps, device)
    train.sampler.set_epoch(4)
    out["data_img_per_s"] = _loader_rate(train, steps, warmup, device, then)
    return out


def _device_rate(fn, pool, steps: int, device) -> float:
    fn(pool[0])
    seconds = timed(lambda i: fn(pool[i % len(pool)]), steps, device)
    return steps * len(pool[0][1]) / seconds


def step_rate(run, steps: int, warmup: int, device) -> float:
    """The training step alone, images/s, on a few batches fetched (and augmented) beforehand."""
    train = run.data.train_batches
    train.sampler.set_epoch(5)
    pool = [b for _, b in zip(range(4), train)]
    salt = epoch_salt(run.data.aug_seed, 5)

    def step(i):
        images, labels, index = pool[i % len(pool)][:3]
        mix = run.data.augment.mix_params(run.data.aug_seed, 5, i, images.shape).to(device)
        run.step(images, labels, index, salt, mix, None)

    timed(step, warmup, device)
    return steps * len(pool[0][1]) / timed(step, steps, device)


def data_bench(trainer, steps: int, warmup: int) -> dict:
    """Every rate, and which of the pipeline and the step bounds the run."""
    run, cfg, dev = trainer.run, trainer.cfg, trainer.device
    device_path = cfg.data.crop == "rrc" and cfg.data.augment_on == "device"
    out = {"recipe": cfg.name, "augment_on": cfg.data.augment_on if cfg.data.crop == "rrc" else "device (pad)",
           "decode_on": ("device" if decodes_on_device(cfg.data, dev) else "workers") if device_path else "workers",
           "num_workers": getattr(run.data.train_batches, "num_workers", 0), "batch_size": cfg.data.batch_size,
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    out.update(data_rates(run, cfg, dev, steps, warmup))
    out["step_img_per_s"] = step_rate(run, steps, warmup, dev)
    out["bound_by"] = "data" if out["data_img_per_s"] < out["step_img_per_s"] else "step"
    return out
