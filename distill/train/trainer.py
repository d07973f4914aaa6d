"""The training loop: epochs of steps over the parts `distill.train.build.build_run` made.

Plain, teacher and distilled runs share this loop; the step itself lives in `distill.train.step`,
the teacher's logits come from `distill.train.teacher_logits`, and the records from `distill.runs.records`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from distill.config import Config, flat_config, may_differ_on_resume
from distill.data.loader import eval_shard
from distill.data.seeds import epoch_salt, step_torch_seed
from distill.errors import ConfigError, DivergenceError
from distill.runs import checkpoint as ckpt
from distill.runs import records, trackers
from distill.runs.folder import create_run_dir, discard_if_unstarted, extension, resolve_run_dir
from distill.precision import this_machine, word
from distill.runs.signals import Preempted, StopRequest
from distill.train.build import build_run, make_accelerator, run_warnings
from distill.train.evaluate import evaluate
from distill.train.graphed import make_capturable
from distill.train.fork import check_fork, fork_source
from distill.train.timing import IntervalRate


class Loop:
    """A run's parts (`build_run`) and its epochs of steps, writing nothing: `distill bench` times
    `train_epoch` this way, and `Trainer` adds the run folder around it."""

    def __init__(self, cfg: Config, accelerator=None):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.accelerator = acc = accelerator or make_accelerator(cfg, self.run_dir)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device, self.world_size, self.rank = acc.device, acc.num_processes, acc.process_index
        skip = self._skip_nonfinite if cfg.train.on_nonfinite == "skip" else None
        self.run = build_run(cfg, acc, skip_nonfinite=skip)

    def train_epoch(self, epoch: int, start_step: int = 0):
        """Steps `start_step`.. of `epoch`; returns (mean loss terms, steps run)."""
        acc, cfg, r = self.accelerator, self.cfg, self.run
        r.trainable.train()
        r.data.train_batches.sampler.set_epoch(epoch, start_step)
        r.teacher_logits.start_epoch(epoch, start_step, self.device)
        # loss sums of the epoch so far (restored from the checkpoint after a mid-epoch resume)
        sums = {k: torch.tensor(v, device=self.device) for k, v in r.progress.partial_sums.items()}
        n_steps, bad_step = r.progress.partial_steps, torch.full((), -1, device=self.device)
        bar = tqdm(total=r.data.steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", leave=False,
                   disable=not (acc.is_local_main_process and sys.stderr.isatty()), dynamic_ncols=True)
        rate, step = IntervalRate(r.global_batch / cfg.train.grad_accum_steps, start_step), start_step
        for step, (images, labels, index) in enumerate(r.data.train_batches, start=start_step):
            terms = self.train_step(images, labels, index, epoch, step)
            if terms is not None:
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                finite = torch.isfinite(terms["loss"].detach())
                bad_step = torch.where(~finite & (bad_step < 0), epoch * r.data.steps_per_epoch + step, bad_step)
                n_steps += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == r.data.steps_per_epoch:
                self._check_finite(bad_step)  # the one host sync of an interval
                loss = (sums["loss"] / max(n_steps, 1)).item() if sums else float("nan")
                img_s = rate.read(done)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")
                records.log(acc, self.run_dir, {"train/loss_running": loss, "train/lr": self._lr(),
                                               "train/img_per_s": img_s}, step=epoch * r.data.steps_per_epoch + done)
            bar.update(1)
            if self._checkpoint_due(done):
                self._check_finite(bad_step)  # no non-finite weights reach a checkpoint
                r.progress.step, r.progress.partial_steps = done, n_steps
                r.progress.partial_sums = {k: v.item() for k, v in sums.items()}
                self._save(epoch * r.data.steps_per_epoch + done)
                if self.stop.agreed:
                    raise Preempted(f"stopped by {self.stop.requested or 'another process'} at epoch {epoch} step "
                                    f"{done}; checkpoint saved in "
                                    f"{self.run_dir / ckpt.CHECKPOINTS}. Resume: the same command with train.resume=auto")
        bar.close()
        self._check_finite(bad_step)
        r.teacher_logits.end_epoch(epoch)
        r.progress.teacher_views += r.teacher_logits.views_run(r.data.steps_per_epoch * r.global_batch //
                                                               cfg.train.grad_accum_steps, self.world_size)
        r.progress.partial_sums, r.progress.partial_steps = {}, 0
        return {k: (v / max(n_steps, 1)).item() for k, v in sums.items()}, step + 1 - start_step

    def train_step(self, images, labels, index, epoch: int, step: int):
        """One micro-batch through the step (eager or graphed alike); the loss terms, or None if skipped."""
        acc, r = self.accelerator, self.run
        # drop-path and other torch draws: a function of the position, so a resume replays them
        torch.manual_seed(step_torch_seed(self.cfg.seed, epoch, step, self.rank))
        r.method.set_progress(epoch + (step + 1) / r.data.steps_per_epoch)  # a function of the position too
        salt = epoch_salt(r.data.aug_seed, epoch)
        mix = r.data.augment.mix_params(r.data.aug_seed, epoch, step, images.shape).to(self.device, non_blocking=True)
        cached = r.teacher_logits.cached(step, lambda: r.data.augment.apply(images, labels, index, salt, mix)[0])
        with acc.accumulate(r.trainable):
            out = r.step(images, labels, index, salt, mix, cached)
            if out is None:
                return None
            r.scheduler.step()
        terms, t_logits = out
        r.teacher_logits.observe(step, t_logits)
        if r.ema is not None and acc.sync_gradients:
            r.ema.update(r.student)
        return terms

    # ---- guards and hooks ------------------------------------------------------------------------
    def _lr(self) -> float:
        return float(self.run.scheduler.get_last_lr()[0])  # a tensor when the step is a CUDA graph

    def _skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """All ranks skip together; costs a host sync per step, hence opt-in (train.on_nonfinite=skip)."""
        bad = self.accelerator.reduce((~torch.isfinite(loss.detach())).float(), "max")
        if bad.item() > 0:
            self.run.progress.skipped_steps += 1
            return True
        return False

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        bad = int(self.accelerator.reduce(bad_step.clone(), "max").item()) if self.world_size > 1 else int(bad_step.item())
        if bad >= 0:
            raise DivergenceError(
                f"loss became non-finite at step {bad} (epoch {bad // self.run.data.steps_per_epoch}); no checkpoint was "
                "written after it. Lower train.lr, set train.clip_grad, or set train.on_nonfinite=skip")

    def _checkpoint_due(self, done: int) -> bool:
        """Whether to checkpoint after micro-batch `done` of the epoch: never, for a loop that writes nothing."""
        return False

    def _save(self, global_step: int) -> None:
        raise AssertionError("a Loop writes no checkpoint: _checkpoint_due is False")

    def _evaluate(self, model: torch.nn.Module, teacher=None) -> dict:
        """Test-set accuracy of `model`, this process's shard, summed over all processes."""
        acc, r = self.accelerator, self.run
        shard = eval_shard(r.data.test_size, self.rank, self.world_size)
        return evaluate(model, r.data.test_batches.iter_range(shard), r.data.normalize,
                        reduce=lambda t: acc.reduce(t, "sum"), teacher=teacher, autocast=acc.autocast)



class Trainer(Loop):
    """`Trainer(cfg).fit()` trains and returns the summary: the loop, plus the run folder (created once,
    never overwritten), checkpoints, resume, records and stop requests (SIGTERM, Ctrl-C)."""

    def __init__(self, cfg: Config):
        run_dir = Path(cfg.output_dir) / cfg.name
        acc = make_accelerator(cfg, run_dir)
        self.resume_from = resolve_run_dir(acc, cfg, run_dir)  # before anything is built: refuse to overwrite
        super().__init__(cfg, acc)
        self.forked_from = fork_source(self.resume_from, run_dir) if self.resume_from else None
        if self.forked_from is not None:  # another run's checkpoint: a cooldown fork, or refused
            updates_per_epoch = self.run.data.steps_per_epoch // cfg.train.grad_accum_steps
            check_fork(cfg, self.resume_from, self.forked_from, updates_per_epoch)
        self.new_folder = not (self.run_dir / records.CONFIG).exists()  # every rank looks before one creates it
        create_run_dir(acc, cfg, self.run_dir)
        self.stop = StopRequest(acc)
        self.final_agreement = None  # the last epoch's evaluation scores it, where the run has a teacher
        records.git_commit()  # the code this process imported, kept for the summary

    def fit(self) -> dict:
        """Train to `train.epochs` (resuming where asked) and return the summary."""
        with discard_if_unstarted(self.accelerator, self.run_dir, self.new_folder):
            return self._fit()

    def _fit(self) -> dict:
        acc, cfg, r, p = self.accelerator, self.cfg, self.run, self.run.progress
        self._resume()  # first: a resume it refuses touches no tracker's run
        self._start_trackers()
        auto = " (auto)" if cfg.train.mixed_precision == "auto" else ""
        acc.print(f"{cfg.name}: {r.cost.params / 1e6:.2f}M params, {self.world_size} process(es) on {self.device.type}, "
                  f"precision {word(acc.mixed_precision)}{auto}, global batch {r.global_batch}, lr {r.lr:.2e}, "
                  f"{r.data.steps_per_epoch} steps/epoch")
        copy = records.data_copy(cfg.data)
        if copy:
            acc.print(f"data: a copy of {copy['source']} resized by distill prepare (long side <= {copy['max_side']}, "
                      f"JPEG quality {copy['quality']})")
        for warning in run_warnings(cfg, acc.mixed_precision, self.device.type):
            acc.print(warning)
        start = self._clock = time.perf_counter() - p.wall_s  # the run's training time so far counts on
        while p.epoch < cfg.train.epochs:
            t0 = time.perf_counter()
            terms, n_steps = self.train_epoch(p.epoch, p.step)
            train_s = time.perf_counter() - t0
            last = p.epoch + 1 == cfg.train.epochs
            self._end_epoch(terms, n_steps, train_s, t0, last or (p.epoch + 1) % cfg.train.eval_every == 0, last)
            p.wall_s = time.perf_counter() - start
            p.epoch, p.step = p.epoch + 1, 0
            if last or p.epoch % cfg.train.checkpoint_every == 0:
                self._save(p.epoch * r.data.steps_per_epoch)
        return self._finish(time.perf_counter() - start)

    # ---- trackers, epochs, checkpoints, the end -------------------------------------------------
    def _start_trackers(self) -> None:
        """The trackers of `train.log_with`, given the resolved config; a resume continues their runs
        (W&B, MLflow) and records again only the keys a resume cannot change."""
        values = flat_config(self.cfg)
        may_differ = may_differ_on_resume()
        unchanged = None if self.resume_from is None else {k: v for k, v in values.items() if k not in may_differ}
        with records.tracker_writes(self.run_dir):  # a full disk there is one line, like every other write
            trackers.start(self.accelerator, self.run_dir, self.cfg.name, self.cfg.train.log_with, values, unchanged)

    def _resume(self) -> None:
        acc, r = self.accelerator, self.run
        if acc.is_main_process:  # a process killed while saving left a temporary folder
            ckpt.remove_partial(self.run_dir)
        r.progress.precision = acc.mixed_precision  # what every checkpoint of the run records
        if self.resume_from is None:
            return
        ckpt.load_checkpoint(acc, self.resume_from)
        check_precision(r.progress.precision, acc.mixed_precision, self.cfg.train.mixed_precision, self.resume_from,
                        self.device.type == "cuda")
        if self.cfg.train.cuda_graphs:  # loaded learning rates are plain numbers again
            make_capturable(r.optimizer.optimizer, self.device)
        if acc.is_main_process:
            records.truncate_metrics(self.run_dir, r.progress.epoch)
        r.progress.precision = acc.mixed_precision
        acc.print(f"resumed from {self.resume_from} at epoch {r.progress.epoch} step {r.progress.step}")

    def _end_epoch(self, terms: dict, n_steps: int, train_s: float, epoch_t0: float, run_eval: bool,
                   last: bool) -> None:
        acc, r, p = self.accelerator, self.run, self.run.progress
        # the last epoch's pass also scores the final student's agreement with its teacher (for the summary):
        # a second pass over the test set would cost as much again as the evaluation
        metrics = self._evaluate(r.student, teacher=r.teacher if last else None) if run_eval else {}
        self.final_agreement = metrics.pop("teacher_agreement", None)
        if r.ema is not None and run_eval:
            metrics["ema_top1"] = self._evaluate(r.ema.module)["top1"]
        if metrics:
            p.best_top1 = max(p.best_top1, metrics["top1"])
        img_s = n_steps * r.global_batch / self.cfg.train.grad_accum_steps / max(train_s, 1e-9)
        record = records.epoch_record(p.epoch, terms, self._lr(), metrics, img_s, time.perf_counter() - epoch_t0)
        if acc.is_main_process:
            records.append_metrics(self.run_dir, record)
        records.log(acc, self.run_dir, {f"train/{k}": v for k, v in record.items() if k.startswith("loss")} |
                   {f"eval/{k}": v for k, v in metrics.items() if k != "eval_samples"} |
                   {"train/lr_epoch": record["lr"], "train/img_per_s_epoch": img_s}, step=(p.epoch + 1) * r.data.steps_per_epoch)
        accuracy = f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  " if metrics else ""
        acc.print(f"epoch {p.epoch + 1}/{self.cfg.train.epochs}  loss {terms.get('loss', float('nan')):.4f}  "
                  f"{accuracy}{img_s:.0f} img/s  {record['epoch_s']:.1f}s")

    def _save(self, global_step: int) -> None:
        # the time so far, mid-epoch too: a run stopped there and resumed counts the steps before the stop
        self.run.progress.wall_s = time.perf_counter() - self._clock
        ckpt.save_checkpoint(self.accelerator, self.run_dir, global_step, self.cfg.train.keep_checkpoints,
                             self.run.student)

    def _finish(self, wall_s: float) -> dict:
        acc, r = self.accelerator, self.run
        extra = extension(self.run_dir, self.cfg.train.epochs)  # before this run's summary replaces the old
        if self.forked_from is not None:  # its FLOPs before the checkpoint are the source run's
            extra["forked_from"] = str(self.resume_from)
        if r.teacher is not None:  # how often the final student agrees with its teacher
            extra["teacher_agreement"] = self.final_agreement if self.final_agreement is not None else \
                self._evaluate(r.student, teacher=r.teacher)["teacher_agreement"]  # resumed after its last epoch
        summary = {}
        if acc.is_main_process:
            ckpt.save_weights_atomic(r.student.state_dict(), self.run_dir / "student.safetensors")
            if r.ema is not None:
                ckpt.save_weights_atomic(r.ema.module.state_dict(), self.run_dir / "student_ema.safetensors")
            summary = records.run_summary(self.cfg, r, records.read_metrics(self.run_dir),
                                         wall_s, extra, self.device, self.world_size, acc.mixed_precision)
            records.write_json_atomic(self.run_dir / records.SUMMARY, summary)
        records.log(acc, self.run_dir, trackers.summary_values(summary),  # every tracker: summary/<key>
                    step=self.cfg.train.epochs * r.data.steps_per_epoch)
        with records.tracker_writes(self.run_dir):
            acc.end_training()
        return summary

    def _checkpoint_due(self, done: int) -> bool:
        """A mid-epoch checkpoint every `checkpoint_every_steps`, or now because a stop was requested."""
        cfg = self.cfg
        if done == self.run.data.steps_per_epoch or done % cfg.train.grad_accum_steps:
            return False  # the epoch-end checkpoint follows evaluation; never save mid-accumulation
        stop = self.stop.poll(at_sync_point=done % cfg.train.log_every == 0)
        every = cfg.train.checkpoint_every_steps
        return stop or bool(every and done % every == 0)


def check_precision(saved, now: str, requested, checkpoint, cuda: bool) -> None:
    """Refuse to go on from a checkpoint computed in another precision than this machine's run would be:
    `train.mixed_precision=auto` follows the hardware (bf16 on a CPU with AVX-512 BF16, fp32 on one
    without), so a run resumed, or forked, on another kind of machine would change precision partway
    and be neither run. Checkpoints written before the precision was recorded (`saved` None) pass."""
    if saved is None or saved == now:
        return
    why = f"train.mixed_precision={requested} on this {this_machine(cuda)}" if requested == "auto" else \
        f"train.mixed_precision={requested}"
    raise ConfigError(f"{checkpoint} was computed in {word(saved)}, but this run would go on in {word(now)} "
                      f"({why}), and a run that changes precision partway is neither run; go on where it computes "
                      f"in {word(saved)} (docs/launching.md), or start it again under another name")
