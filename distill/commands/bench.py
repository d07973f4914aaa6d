"""`distill bench RECIPE`: steady-state speed of the real training step, on CPU or GPU.

Method: the recipe's trainer is built as for a run (same data path, augmentation, model,
teacher, precision), but no run folder is written. The trainer's own epoch loop runs `warmup`
steps untimed (allocator, autotuning, torch.compile), then `rounds` blocks of `steps` steps, each
the tail of an epoch, timed between two device synchronisations: batch gathering, augmentation,
the step and its logging all count. Training images/s = all timed steps x global batch / their
seconds. With `reference=True` every round also times `steps` steps of the common loop and of the
compute ceiling (`distill.commands.bench_reference`), the framework and the ceiling in alternating order,
so that a machine whose speed drifts (shared CPUs, clocks) slows all three alike.

For a distilled recipe the teacher's forward on the same batches is timed alone, and the
student's share is the rest; with `distill.cache=true` one whole epoch first records the
teacher's logits (untimed; skipped when the cache already holds it) and the timed steps replay
them. Inference is the student's eval forward at `data.eval_batch_size`. Peak memory is the CUDA
allocator's peak, or the process's peak resident set on a CPU.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from distill.commands.bench_data import data_bench
from distill.commands.bench_reference import CeilingLoop, ReferenceLoop
from distill.config import Config
from distill.data.loader import DeviceBatches
from distill.errors import ConfigError
from distill.train.timing import peak_memory_mb, timed
from distill.train.trainer import Loop


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for model-FLOPs utilisation.
_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def peak_bf16_tflops(device_name: str):
    return next((v for k, v in _PEAK_BF16_TFLOPS.items() if k in device_name), None)


STEPS, WARMUP = 50, 10  # --steps and --warmup where the epoch has steps enough; else what fits it


def fit_steps(cfg: Config, steps_per_epoch: int, steps: Optional[int], warmup: Optional[int], passes: int,
              what: str) -> Tuple[int, int]:
    """(steps, warmup) such that warmup + passes x steps fits one epoch: those given (checked), or the
    defaults cut to the epoch. One line naming the batch size where even one step does not fit."""
    if warmup is None:
        warmup = min(WARMUP, max(1, steps_per_epoch // 10))
    if steps is None:
        steps = min(STEPS, (steps_per_epoch - warmup) // passes)
        if steps < 1:
            raise ConfigError(f"{what} needs at least {warmup + passes} steps of an epoch, but one epoch here is "
                              f"{steps_per_epoch} step(s) at data.batch_size={cfg.data.batch_size}: lower "
                              "data.batch_size (or use more images)")
    times = f"{passes} x steps" if passes > 1 else "steps"
    if steps < 1 or warmup < 0 or warmup + passes * steps > steps_per_epoch:
        raise ConfigError(f"{what} needs warmup + {times} = {warmup + passes * steps} <= {steps_per_epoch} steps per "
                          f"epoch (at data.batch_size={cfg.data.batch_size}); pass smaller --steps/--warmup, lower "
                          "data.batch_size, or leave --steps/--warmup out to fit them to the epoch")
    return steps, warmup


def run_bench(cfg: Config, steps: Optional[int] = None, warmup: Optional[int] = None, rounds: int = 1,
              reference: bool = False) -> dict:
    """Training, teacher and inference throughput of `cfg`'s trainer; returns a JSON-able dict. `steps` and
    `warmup`: None fits them to the epoch (`fit_steps`)."""
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be >= 1")
    if reference and (cfg.student.distilled or cfg.distill.type != "none"):
        raise ConfigError("--reference compares plain training: pass a plain recipe")
    trainer = Loop(cfg)  # builds the run; writes no folder and no checkpoint
    dev, run = trainer.device, trainer.run
    if reference and not isinstance(run.data.train_batches, DeviceBatches):
        raise ConfigError("--reference times a common loop over an in-memory dataset; this recipe streams "
                          f"data.name={cfg.data.name} from disk: drop --reference (scripts/bench_data.py "
                          "compares the on-disk data path with timm's loader)")
    steps, warmup = fit_steps(cfg, run.data.steps_per_epoch, steps, warmup, 1, "bench")
    cache = run.teacher_logits.cache
    result = {"recipe": cfg.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "world_size": trainer.world_size, "batch_size": cfg.data.batch_size, "global_batch": run.global_batch,
              "mixed_precision": trainer.accelerator.mixed_precision, "compile": cfg.train.compile, "steps": steps,
              "warmup": warmup, "rounds": rounds, "distill_type": cfg.distill.type,
              "teacher_cached": cache is not None, "params": run.cost.params}
    train_s = _time_training(trainer, steps, warmup, rounds, reference, result)
    run.data.train_batches.sampler.set_epoch(2)
    pool = [b for _, b in zip(range(8), run.data.train_batches)]
    if run.teacher is not None and cache is None:
        result.update(_teacher_share(trainer, pool, steps, warmup, train_s))
    result["gflops_forward"] = run.cost.gflops
    result["train_tflops"] = run.cost.train_gflops * result["train_img_per_s"] / 1e3  # counted fwd + bwd
    peak = peak_bf16_tflops(result["device"])
    if peak and dev.type == "cuda":
        result["peak_bf16_tflops"] = peak
        result["mfu"] = result["train_tflops"] / peak
    result["infer_img_per_s"] = _inference(trainer, pool[0][0], steps, warmup)
    return result


def run_data_bench(cfg: Config, steps: Optional[int] = None, warmup: Optional[int] = None) -> dict:
    """`--data`: the input pipeline's rates beside the step's (`distill.commands.bench_data`)."""
    trainer = Loop(cfg)
    # three passes over the sampler's epochs (a worker's, the pipeline's, the step's)
    steps, warmup = fit_steps(cfg, trainer.run.data.steps_per_epoch, steps, warmup, 3, "bench --data")
    return data_bench(trainer, steps, warmup)


def _time_training(trainer, steps: int, warmup: int, rounds: int, reference: bool, result: dict) -> float:
    """Interleaved timed blocks of the framework (and the yardsticks); fills `result`, returns one
    framework block's seconds."""
    cfg, dev, run = trainer.cfg, trainer.device, trainer.run
    spe = run.data.steps_per_epoch

    def epoch_tail(epoch: int, n: int) -> float:
        """The last n steps of an epoch through the trainer's own loop: gather, augment, step, log."""
        return timed(lambda _: trainer.train_epoch(epoch, spe - n), 1, dev)

    epoch_tail(0, warmup)
    cache = run.teacher_logits.cache
    if cache is not None and not cache.has(1):  # record epoch 1, so the timed tails replay it
        trainer.train_epoch(1, 0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    first_train_s = epoch_tail(1, steps)  # round 0's framework block, timed before any yardstick exists,
    result["peak_memory_mb"] = peak_memory_mb(dev)  # so that the peak memory is the framework's alone
    timers = {"train": lambda: epoch_tail(1, steps)}
    if reference:
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.accelerator.mixed_precision)
        ref, ceiling = ReferenceLoop(cfg, dev), CeilingLoop(cfg, dev, amp)
        ceiling.timed(0, warmup)
        timers.update(ceiling=lambda: ceiling.timed(steps, 0), reference=lambda: ref.timed(steps, warmup))
    per_round = []
    for r in range(rounds):
        order = list(timers)
        if r % 2 and reference:  # alternate which of the framework and the ceiling goes first
            order[:2] = order[1::-1]
        per_round.append({f"{k}_s": first_train_s if (r, k) == (0, "train") else timers[k]() for k in order})
    images = rounds * steps * run.global_batch
    seconds = {k: sum(t[f"{k}_s"] for t in per_round) for k in timers}
    result.update(train_img_per_s=images / seconds["train"], train_step_ms=1e3 * seconds["train"] / (rounds * steps))
    if reference:
        result.update(reference_img_per_s=images / seconds["reference"], ceiling_img_per_s=images / seconds["ceiling"],
                      vs_reference=seconds["reference"] / seconds["train"], vs_ceiling=seconds["ceiling"] / seconds["train"])
    if rounds > 1:
        result["per_round"] = [{f"{k}_img_per_s": steps * run.global_batch / t[f"{k}_s"] for k in timers}
                               for t in per_round]
    return seconds["train"] / rounds


def _teacher_share(trainer, pool, steps: int, warmup: int, train_s: float) -> dict:
    """The teacher's forward on the same views, timed alone, and the student's rest of the step."""
    run, acc = trainer.run, trainer.accelerator
    views = [run.data.augment(im, lb, ix, run.data.aug_seed, 0, j)[0] for j, (im, lb, ix) in enumerate(pool[:8])]

    def teacher_fwd(i):
        with torch.no_grad(), acc.autocast():
            run.teacher(views[i % len(views)])

    timed(teacher_fwd, warmup, trainer.device)
    teacher_s = timed(teacher_fwd, steps, trainer.device)
    return {"teacher_ms": 1e3 * teacher_s / steps, "student_ms": 1e3 * (train_s - teacher_s) / steps,
            "teacher_share": teacher_s / train_s}


def _inference(trainer, images, steps: int, warmup: int) -> float:
    """The student's eval forward at `data.eval_batch_size`, images/s."""
    run, acc, model = trainer.run, trainer.accelerator, trainer.run.student
    model.eval()
    x = run.data.normalize(images[:1].expand(trainer.cfg.data.eval_batch_size, -1, -1, -1).contiguous())

    def infer(i):
        with torch.no_grad(), acc.autocast():
            model(x)

    timed(infer, warmup, trainer.device)
    return steps * x.shape[0] / timed(infer, steps, trainer.device)


def format_table(result: dict) -> str:
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
