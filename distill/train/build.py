"""One place that builds the parts of a run from its config: `train`, `bench` and `eval` all call it.

`build_run(cfg, accelerator)` returns a `Run`: data, augmentation, student, teacher and its
logit source, optimizer, schedule, EMA and the training step. Each builder below takes only the
sub-config it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from distill.config import Config, DataConfig, TrainConfig
from distill.data.augment import BatchAugment, Normalize
from distill.data.loader import DeviceBatches, LoaderBatches, ShardedBatches
from distill.data.sources import load_split
from distill.data.device.views import DeviceAugment, DeviceTrainViews
from distill.data.transforms import EvalViews, TrainViews, eval_transform, train_transform
from distill.errors import ConfigError
from distill.methods import METHODS, Method, build_criterion, build_method
from distill.runs.checkpoint import Progress
from distill.runs.launcher import accelerate_cpu, check_processes
from distill.runs.trackers import log_with
from distill.train.cache import LogitCache, cache_key, cache_root, resolve_topk
from distill.models import build_student
from distill.models.cost import count_params, forward_gflops, train_gflops
from distill.train.graphed import GraphedStep, make_capturable
from distill.precision import fp32_matmul_precision, precision_warning, resolve
from distill.schedule import lr_factor
from distill.train.start import load_start
from distill.train.step import TrainStep, accelerate_hooks, graph_hooks
from distill.train.teacher_logits import TeacherLogits
from teachers import load_teacher


@dataclass
class RunData:
    """The data side of a run: batches (in memory on the device, or from DataLoader workers), their
    normalisation and augmentation, and the views' seed (`data.aug_seed`, resolved)."""

    train_batches: Union[DeviceBatches, LoaderBatches]
    test_batches: Union[DeviceBatches, LoaderBatches]
    test_size: int
    normalize: Normalize
    augment: BatchAugment
    aug_seed: int
    steps_per_epoch: int
    num_classes: int
    in_chans: int
    mean: Tuple[float, ...]  # the train split's, in [0, 1] units (the teacher adapts from them)
    std: Tuple[float, ...]


@dataclass
class RunCost:
    """What one image costs, counted by `torch.utils.flop_counter` (`distill.models.cost`)."""

    params: int  # the student's
    gflops: float  # the student's forward, eval mode
    train_gflops: float  # the module that trains: forward in training mode and backward
    teacher_gflops: float  # what the step runs of the teacher (its forward; feature: up to its layer); 0 without


@dataclass
class Run:
    """Everything a run is made of. `student` is the student itself (never compiled or wrapped: what
    is saved, evaluated and averaged); `trainable` is the prepared module that trains (the student, or
    the student with a method's own modules, from `Method.wrap`)."""

    data: RunData
    student: torch.nn.Module
    trainable: torch.nn.Module
    teacher: Optional[torch.nn.Module]
    teacher_logits: TeacherLogits
    method: Method
    optimizer: torch.optim.Optimizer  # Accelerate's wrapper around AdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler  # likewise
    ema: Optional[ModelEmaV3]
    progress: Progress
    step: Union[TrainStep, GraphedStep]
    cost: RunCost
    global_batch: int
    lr: float


def run_warnings(cfg: Config, resolved_precision: str, device_type: str) -> list:
    """Lines a run prints under its header: settings that run, but rarely as the user meant."""
    lines = [precision_warning(cfg.train.mixed_precision, resolved_precision, device_type)]
    if METHODS[cfg.distill.type].needs_teacher and not cfg.teacher.checkpoint and not cfg.teacher.pretrained:
        lines.append(f"warning: the teacher {cfg.teacher.model} has random weights (no teacher.checkpoint, "
                     "teacher.pretrained=false): the student learns from noise; give teacher.checkpoint=RUN_OR_FILE")
    return [line for line in lines if line]


def make_accelerator(cfg: Config, run_dir: Path) -> Accelerator:
    """Accelerate with the recipe's precision and accumulation, logging to the trackers of `train.log_with`.

    The process group's timeout bounds how long a collective waits for a process that died (a
    lost node): NCCL's default is ten minutes, gloo's thirty; `train.dist_timeout_s` sets both."""
    cpu = accelerate_cpu()  # on a machine without a GPU, a launched job of N processes runs over gloo
    acc = Accelerator(
        cpu=cpu,
        mixed_precision=resolve(cfg.train.mixed_precision, torch.cuda.is_available() and not cpu),
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=log_with(cfg.train.log_with, run_dir),  # train.log_with, each installed, or one line
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))],
    )
    check_processes(acc.num_processes)  # before the run folder is looked at: the launcher's N, or one line
    torch.set_float32_matmul_precision(fp32_matmul_precision(acc.device.type))  # TF32 where fp32 runs on a GPU
    return acc


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW; timm's factory leaves norms, biases and `no_weight_decay()` tokens undecayed.

    The fused kernel (CPU and CUDA) updates all parameters in one pass: fewer launches per step.
    """
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                               fused=True)


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The DeiT rule: lr grows linearly with the global batch, so a recipe means the same at any scale."""
    return cfg.lr * global_batch / cfg.lr_base_batch


def build_scheduler(optimizer, cfg: TrainConfig, updates_per_epoch: int, ticks_per_update: int):
    """`train.schedule` per optimizer update (`distill/schedule.py`), as a LambdaLR. Accelerate's
    prepared scheduler ticks once per process at every update (it assumes a schedule written for one
    process), so the schedule is laid out in ticks: updates x ticks_per_update."""
    total = max(1, cfg.epochs * updates_per_epoch)
    warmup = int(cfg.warmup_epochs * updates_per_epoch)
    floor = min(cfg.min_lr / optimizer.param_groups[0]["lr"], 1.0)

    def factor(tick: int) -> float:
        return lr_factor(tick, total, warmup, floor, cfg.schedule, cfg.cooldown, cfg.cooldown_shape, ticks_per_update)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_batches(cfg: DataConfig, split, device, sampler: Optional[ShardedBatches] = None,
                  normalize: Optional[Normalize] = None):
    """Training batches (with `sampler`) or ordered evaluation batches of a split, on `device`.

    In-memory sets are indexed where they are stored (on the device, or on the host with
    `data.device_resident=false`); on-disk sets are decoded by DataLoader workers. Under
    `data.crop=rrc` the workers also run timm's per-sample transforms, seeded per view by the
    sampler's seed (`distill.data.transforms`), and hand out normalised float views; under
    `data.augment_on=device` they crop and draw, and RandAugment, normalisation and erasing run on the
    device (`distill.data.device.views`)."""
    batch = 0 if sampler is not None else cfg.eval_batch_size
    if cfg.crop == "rrc":
        if sampler is not None and cfg.augment_on == "device":
            return device_augmented_batches(cfg, split, device, sampler, normalize)
        if sampler is not None:
            views = TrainViews(split, train_transform(cfg, split.mean, split.std), sampler.seed)
        else:
            views = EvalViews(split, eval_transform(cfg, split.mean, split.std))
        return LoaderBatches(views, sampler, device, cfg.num_workers, batch)
    if hasattr(split, "images"):
        storage = device if cfg.device_resident else torch.device("cpu")
        return DeviceBatches(split, sampler, device, batch, storage=storage)
    return LoaderBatches(split, sampler, device, cfg.num_workers, batch)


def decodes_on_device(cfg: DataConfig, device) -> bool:
    """`data.decode_on`: auto decodes JPEGs on the device where it is a GPU (nvJPEG), else in the workers."""
    return cfg.decode_on == "device" or (cfg.decode_on == "auto" and torch.device(device).type == "cuda")


def device_augmented_batches(cfg: DataConfig, split, device, sampler: ShardedBatches, normalize: Normalize):
    """`data.augment_on=device`: workers crop and draw; the device decodes (optionally), resizes and augments."""
    views = DeviceTrainViews(split, cfg, sampler.seed, decode_on_device=decodes_on_device(cfg, device))
    return LoaderBatches(views, sampler, device, cfg.num_workers,
                         on_device=DeviceAugment(cfg, views.rand_augment, normalize, split.in_chans, views.name))


def build_augment(cfg: DataConfig, normalize: Normalize, num_classes: int) -> BatchAugment:
    mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, cutmix_minmax=cfg.cutmix_minmax,
                  prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                  label_smoothing=cfg.label_smoothing, num_classes=num_classes) if cfg.mixing else None
    return BatchAugment(normalize, cfg.crop_padding, cfg.hflip, num_classes, cfg.label_smoothing, mixup)


def _check_cuda_graphs(cfg: Config, acc: Accelerator, train_batches) -> None:
    why = [w for w, bad in [
        ("a CUDA device", acc.device.type != "cuda"), ("one process", acc.num_processes > 1),
        ("train.grad_accum_steps=1", cfg.train.grad_accum_steps > 1), ("not fp16", acc.mixed_precision == "fp16"),
        ("train.on_nonfinite=stop", cfg.train.on_nonfinite == "skip"), ("train.compile=false", cfg.train.compile),
        ("an in-memory dataset on the device", not isinstance(train_batches, DeviceBatches)
         or train_batches.images.device.type != "cuda")] if bad]
    if why:
        raise ConfigError(f"train.cuda_graphs=true needs {', '.join(why)}; set train.cuda_graphs=false")


def build_step(cfg: TrainConfig, acc: Accelerator, model, student, teacher, criterion, augment, optimizer,
               skip_nonfinite=None):
    """The training step: eager through Accelerate, or the same step captured as a CUDA graph."""
    if not cfg.cuda_graphs:
        hooks = accelerate_hooks(acc, student, cfg.clip_grad, skip_nonfinite)
        return TrainStep(student, augment, criterion, teacher, optimizer, hooks)
    make_capturable(optimizer.optimizer, acc.device)
    amp = {"bf16": torch.bfloat16}.get(acc.mixed_precision)
    return GraphedStep(TrainStep(model, augment, criterion, teacher, optimizer.optimizer,
                                 graph_hooks(model, cfg.clip_grad, amp)))


def build_data(cfg: DataConfig, acc: Accelerator) -> RunData:
    """Both splits, their batches on the device, normalisation and augmentation."""
    with acc.main_process_first():  # one rank downloads a missing dataset while the others wait
        train_set, test_set = load_split(cfg, train=True), load_split(cfg, train=False)
    normalize = Normalize(train_set.mean, train_set.std).to(acc.device)
    augment = build_augment(cfg, normalize, train_set.num_classes)
    sampler = ShardedBatches(len(train_set), cfg.batch_size, acc.process_index, acc.num_processes, cfg.aug_seed,
                             cfg.aug_repeats)
    return RunData(build_batches(cfg, train_set, acc.device, sampler, normalize), build_batches(cfg, test_set, acc.device),
                   len(test_set), normalize, augment, cfg.aug_seed, sampler.steps_per_epoch, train_set.num_classes,
                   train_set.in_chans, tuple(train_set.mean), tuple(train_set.std))


def build_run(cfg: Config, acc: Accelerator, skip_nonfinite=None) -> Run:
    """All parts of a run, in the order that fixes their random initialisation (student, then teacher)."""
    data = build_data(cfg.data, acc)
    if data.steps_per_epoch < cfg.train.grad_accum_steps:  # Accelerate would never sync: no update at all
        raise ConfigError(f"train.grad_accum_steps={cfg.train.grad_accum_steps} is more than the "
                          f"{data.steps_per_epoch} steps of an epoch; lower it or data.batch_size")
    if cfg.train.cuda_graphs:
        _check_cuda_graphs(cfg, acc, data.train_batches)
    in_chans, img_size = data.in_chans, cfg.data.img_size

    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    model = build_student(cfg.student, data.num_classes, in_chans, img_size)
    if cfg.student.checkpoint:  # start weights, adapted to this student by timm's loader
        load_start(model, cfg.student.checkpoint, in_chans)
    shape = (in_chans, img_size, img_size)
    method = build_method(cfg.distill, build_criterion(data.augment.mixup is not None, cfg.data.label_smoothing))
    method.to(acc.device)  # buffers a CUDA graph reads (DKD's warm-up weight) live on the device
    # 4-d weights only; a convolution then computes in the weight's layout (oneDNN on CPUs, cuDNN on GPUs)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    teacher = None
    if method.needs_teacher:
        with acc.main_process_first():  # one rank reads or downloads the weights first
            teacher = load_teacher(cfg.teacher, data.num_classes, in_chans, data.mean, data.std)
        teacher.to(acc.device, memory_format=memory_format)  # frozen, in eval mode; never prepared (no DDP)
        teacher.check_input(in_chans, img_size)  # here, not at the first step: before the run folder exists
    # feature: student + projection; a method with state (CRD): student + the method (`methods.taps.WithMethod`)
    trainable, step_teacher = method.wrap(model, teacher, in_chans, img_size,
                                          data.train_batches.sampler.num_samples)
    trainable.to(acc.device, memory_format=memory_format)
    cost = RunCost(count_params(model), forward_gflops(model, shape), train_gflops(trainable, shape),
                   forward_gflops(step_teacher, shape) if step_teacher is not None else 0.0)
    global_batch = cfg.data.batch_size * acc.num_processes * cfg.train.grad_accum_steps
    lr = scaled_lr(cfg.train, global_batch)
    optimizer = build_optimizer(trainable, cfg.train, lr)
    scheduler = build_scheduler(optimizer, cfg.train, data.steps_per_epoch // cfg.train.grad_accum_steps,
                                acc.num_processes)
    student = torch.compile(trainable) if cfg.train.compile else trainable
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    ema = None
    if cfg.train.ema:
        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
        acc.register_for_checkpointing(ema)
    progress = Progress()
    acc.register_for_checkpointing(progress)
    cache = None
    if cfg.distill.cache:
        cache = LogitCache(cache_root(cfg), cache_key(cfg, acc.num_processes, acc.mixed_precision, data.mean),
                           acc.process_index, acc.num_processes, data.steps_per_epoch,
                           resolve_topk(cfg.distill.cache_topk, data.num_classes), data.num_classes)
    step = build_step(cfg.train, acc, trainable, student, step_teacher, method, data.augment, optimizer,
                      skip_nonfinite)
    return Run(data, model, student, teacher, TeacherLogits(teacher, cache, acc.autocast), method, optimizer,
               scheduler, ema, progress, step, cost, global_batch, lr)
