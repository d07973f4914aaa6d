"""The training loop: epochs of steps over the parts `distill.build.build_run` made.

Plain, teacher and distilled runs share this loop; the step itself lives in `distill.step`, the
teacher's logits come from `distill.teacher_logits`, and the records from `distill.runlog`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from distill import checkpoint as ckpt
from distill import runlog
from distill.augment import hash32
from distill.build import build_run, make_accelerator
from distill.config import Config
from distill.engine import evaluate
from distill.errors import DivergenceError
from distill.faults import Preempted, StopRequest
from distill.loader import eval_shard
from distill.rundir import create_run_dir, resolve_run_dir
from distill.timing import IntervalRate


class Trainer:
    """`Trainer(cfg).fit()` trains and returns the summary. `dry_run`: build everything but write
    nothing (no run folder, no checkpoints): `distill bench` times `train_epoch` this way."""

    def __init__(self, cfg: Config, dry_run: bool = False):
        self.cfg, self.dry_run = cfg, dry_run
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.accelerator = acc = make_accelerator(cfg, self.run_dir)
        self.resume_from = None if dry_run else resolve_run_dir(acc, cfg, self.run_dir)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device, self.world_size, self.rank = acc.device, acc.num_processes, acc.process_index
        skip = self._skip_nonfinite if cfg.train.on_nonfinite == "skip" else None
        self.run = build_run(cfg, acc, skip_nonfinite=skip)
        if not dry_run:
            create_run_dir(acc, cfg, self.run_dir)
        self.stop = StopRequest(acc, handle_signals=not dry_run)  # a bench keeps Ctrl-C's usual meaning

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        acc, cfg, r, p = self.accelerator, self.cfg, self.run, self.run.progress
        with runlog.tracker_writes(self.run_dir):  # a full disk there is one line, like every other write
            acc.init_trackers("tensorboard")
        self._resume()
        acc.print(f"{cfg.name}: {r.params / 1e6:.2f}M params, {self.world_size} process(es) on {self.device.type}, "
                  f"global batch {r.global_batch}, lr {r.lr:.2e}, {r.steps_per_epoch} steps/epoch")
        start = time.perf_counter() - p.wall_s
        while p.epoch < cfg.train.epochs:
            t0 = time.perf_counter()
            terms, n_steps = self.train_epoch(p.epoch, p.step)
            train_s = time.perf_counter() - t0
            last = p.epoch + 1 == cfg.train.epochs
            self._end_epoch(terms, n_steps, train_s, t0, last or (p.epoch + 1) % cfg.train.eval_every == 0)
            p.wall_s = time.perf_counter() - start
            p.epoch, p.step = p.epoch + 1, 0
            if last or p.epoch % cfg.train.checkpoint_every == 0:
                self._save(p.epoch * r.steps_per_epoch)
        return self._finish(time.perf_counter() - start)

    def train_epoch(self, epoch: int, start_step: int = 0):
        """Steps `start_step`.. of `epoch`; returns (mean loss terms, steps run)."""
        acc, cfg, r = self.accelerator, self.cfg, self.run
        r.student.train()
        r.train_batches.sampler.set_epoch(epoch, start_step)
        r.teacher_logits.start_epoch(epoch, start_step, self.device)
        # loss sums of the epoch so far (restored from the checkpoint after a mid-epoch resume)
        sums = {k: torch.tensor(v, device=self.device) for k, v in r.progress.partial_sums.items()}
        n_steps, bad_step = r.progress.partial_steps, torch.full((), -1, device=self.device)
        bar = tqdm(total=r.steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", leave=False,
                   disable=not (acc.is_local_main_process and sys.stderr.isatty()), dynamic_ncols=True)
        rate, step = IntervalRate(r.global_batch / cfg.train.grad_accum_steps, start_step), start_step
        for step, (images, labels, index) in enumerate(r.train_batches, start=start_step):
            terms = self._train_step(images, labels, index, epoch, step)
            if terms is not None:
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                finite = torch.isfinite(terms["loss"].detach())
                bad_step = torch.where(~finite & (bad_step < 0), epoch * r.steps_per_epoch + step, bad_step)
                n_steps += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == r.steps_per_epoch:
                self._check_finite(bad_step)  # the one host sync of an interval
                loss = (sums["loss"] / max(n_steps, 1)).item() if sums else float("nan")
                img_s = rate.read(done)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")
                runlog.log(acc, self.run_dir, {"train/loss_running": loss, "train/lr": self._lr(),
                                               "train/img_per_s": img_s}, step=epoch * r.steps_per_epoch + done)
            bar.update(1)
            if self._checkpoint_due(done):
                self._check_finite(bad_step)  # no non-finite weights reach a checkpoint
                r.progress.step, r.progress.partial_steps = done, n_steps
                r.progress.partial_sums = {k: v.item() for k, v in sums.items()}
                self._save(epoch * r.steps_per_epoch + done)
                if self.stop.agreed:
                    raise Preempted(f"stopped by {self.stop.requested or 'another process'} at epoch {epoch} step "
                                    f"{done}; checkpoint saved in "
                                    f"{self.run_dir / ckpt.CHECKPOINTS}. Resume: the same command with train.resume=auto")
        bar.close()
        self._check_finite(bad_step)
        r.teacher_logits.end_epoch(epoch)
        r.progress.partial_sums, r.progress.partial_steps = {}, 0
        return {k: (v / max(n_steps, 1)).item() for k, v in sums.items()}, step + 1 - start_step

    def _train_step(self, images, labels, index, epoch: int, step: int):
        """One micro-batch through the step (eager or graphed alike); the loss terms, or None if skipped."""
        acc, r = self.accelerator, self.run
        # drop-path and other torch draws: a function of the position, so a resume replays them
        torch.manual_seed(hash32(self.cfg.seed * 0x9E3779B1 ^ hash32(epoch * 1_000_003 + step) ^ self.rank))
        salt = r.augment.salt(r.aug_seed, epoch)
        mix = r.augment.mix_params(r.aug_seed, epoch, step, images.shape).to(self.device, non_blocking=True)
        cached = r.teacher_logits.cached(step, lambda: r.augment.apply(images, labels, index, salt, mix)[0])
        with acc.accumulate(r.student):
            out = r.step(images, labels, index, salt, mix, cached)
            if out is None:
                return None
            r.scheduler.step()
        terms, t_logits = out
        r.teacher_logits.observe(step, t_logits)
        if r.ema is not None and acc.sync_gradients:
            r.ema.update(r.model)
        return terms

    # ---- epochs, checkpoints, the end ----------------------------------------------------------
    def _resume(self) -> None:
        acc, r = self.accelerator, self.run
        if acc.is_main_process:  # a process killed while saving left a temporary folder
            ckpt.remove_partial(self.run_dir)
        if self.resume_from is None:
            return
        ckpt.load_checkpoint(acc, self.resume_from)
        if self.cfg.train.cuda_graphs:  # loaded learning rates are plain numbers again
            from distill.graphed import make_capturable

            make_capturable(r.optimizer.optimizer, self.device)
        if acc.is_main_process:
            runlog.truncate_metrics(self.run_dir, r.progress.epoch)
        acc.print(f"resumed from {self.resume_from} at epoch {r.progress.epoch} step {r.progress.step}")

    def _end_epoch(self, terms: dict, n_steps: int, train_s: float, epoch_t0: float, run_eval: bool) -> None:
        acc, r, p = self.accelerator, self.run, self.run.progress
        metrics = self._evaluate(r.model) if run_eval else {}
        if r.ema is not None and run_eval:
            metrics["ema_top1"] = self._evaluate(r.ema.module)["top1"]
        if metrics:
            p.best_top1 = max(p.best_top1, metrics["top1"])
        img_s = n_steps * r.global_batch / self.cfg.train.grad_accum_steps / max(train_s, 1e-9)
        record = runlog.epoch_record(p.epoch, terms, self._lr(), metrics, img_s, time.perf_counter() - epoch_t0)
        if acc.is_main_process:
            runlog.append_metrics(self.run_dir, record)
        runlog.log(acc, self.run_dir, {f"train/{k}": v for k, v in record.items() if k.startswith("loss")} |
                   {f"eval/{k}": v for k, v in metrics.items() if k != "eval_samples"} |
                   {"train/lr_epoch": record["lr"], "train/img_per_s_epoch": img_s}, step=(p.epoch + 1) * r.steps_per_epoch)
        accuracy = f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  " if metrics else ""
        acc.print(f"epoch {p.epoch + 1}/{self.cfg.train.epochs}  loss {terms.get('loss', float('nan')):.4f}  "
                  f"{accuracy}{img_s:.0f} img/s  {record['epoch_s']:.1f}s")

    def _evaluate(self, model: torch.nn.Module, teacher=None) -> dict:
        """Test-set accuracy of `model`, this process's shard, summed over all processes."""
        acc, r = self.accelerator, self.run
        shard = eval_shard(r.test_size, self.rank, self.world_size)
        return evaluate(model, r.test_batches.iter_range(shard), r.normalize,
                        reduce=lambda t: acc.reduce(t, "sum"), teacher=teacher, autocast=acc.autocast)

    def _save(self, global_step: int) -> None:
        if not self.dry_run:
            ckpt.save_checkpoint(self.accelerator, self.run_dir, global_step, self.cfg.train.keep_checkpoints,
                                 self.run.model)

    def _finish(self, wall_s: float) -> dict:
        acc, r = self.accelerator, self.run
        extra = {}
        if r.teacher is not None:  # how often the final student agrees with its teacher
            extra["teacher_agreement"] = self._evaluate(r.model, teacher=r.teacher)["teacher_agreement"]
        summary = {}
        if acc.is_main_process:
            ckpt.save_weights_atomic(r.model.state_dict(), self.run_dir / "student.safetensors")
            if r.ema is not None:
                ckpt.save_weights_atomic(r.ema.module.state_dict(), self.run_dir / "student_ema.safetensors")
            summary = runlog.run_summary(self.cfg, r, runlog.read_metrics(self.run_dir),
                                         wall_s, extra, self.device, self.world_size)
            runlog.write_json_atomic(self.run_dir / runlog.SUMMARY, summary)
        with runlog.tracker_writes(self.run_dir):
            acc.end_training()
        return summary

    # ---- guards ----------------------------------------------------------------------------------
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
                f"loss became non-finite at step {bad} (epoch {bad // self.run.steps_per_epoch}); no checkpoint was "
                "written after it. Lower train.lr, set train.clip_grad, or set train.on_nonfinite=skip")

    def _checkpoint_due(self, done: int) -> bool:
        """A mid-epoch checkpoint every `checkpoint_every_steps`, or now because a stop was requested."""
        cfg = self.cfg
        if done == self.run.steps_per_epoch or done % cfg.train.grad_accum_steps:
            return False  # the epoch-end checkpoint follows evaluation; never save mid-accumulation
        stop = self.stop.poll(at_sync_point=done % cfg.train.log_every == 0)
        every = cfg.train.checkpoint_every_steps
        return stop or bool(every and done % every == 0)
