"""The training loop on HF Accelerate: one code path for plain, teacher and distilled runs."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from timm.utils import ModelEmaV3
from tqdm import tqdm

from distill import checkpoint as ckpt
from distill import runlog
from distill.augment import BatchAugment, Normalize, hash32
from distill.build import build_data, build_optimizer, build_scheduler, build_student, scaled_lr
from distill.cache import CHECK_SAMPLES, LogitCache, cache_key, cache_root
from distill.config import Config, ConfigError
from distill.engine import evaluate
from distill.loader import DeviceBatches, LoaderBatches, ShardedBatches
from distill.losses import DistillationLoss, build_criterion
from distill.profile import count_params, forward_gflops
from distill.rundir import create_run_dir, resolve_run_dir
from teachers import load_teacher
from distill.errors import DivergenceError  # noqa: F401  (raised here; re-exported)


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written. The CLI says how to resume and exits 0."""


class Trainer:
    def __init__(self, cfg: Config, dry_run: bool = False):
        """`dry_run`: build everything but write no run folder (`distill bench`)."""
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )
        self.resume_from = None if dry_run else resolve_run_dir(acc, cfg, self.run_dir)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device, self.world_size, self.rank = acc.device, acc.num_processes, acc.process_index
        self._build()
        if not dry_run:
            create_run_dir(acc, cfg, self.run_dir)
        self.stop_requested = False  # set by the SIGTERM handler, in this process
        self.stop_now = False  # agreed by all processes: stop at this step
        signal.signal(signal.SIGTERM, self._on_sigterm)

    # ---- setup -------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.aug_seed = cfg.data.aug_seed if cfg.data.aug_seed is not None else cfg.seed
        with acc.main_process_first():  # one rank downloads a missing dataset while the others wait
            train_set, test_set = build_data(cfg.data)
        self.num_classes, in_chans = train_set.num_classes, train_set.in_chans
        self.normalize = Normalize(train_set.mean, train_set.std).to(self.device)
        self.augment = BatchAugment(self.normalize, cfg.data.crop_padding, cfg.data.hflip, self.num_classes,
                                    cfg.data.mixup_alpha, cfg.data.cutmix_alpha, cfg.data.mixup_prob,
                                    cfg.data.label_smoothing)
        self.train_batches, self.test_batches = self._batches(train_set, test_set)
        self.test_size = len(test_set)
        self.steps_per_epoch = self.train_batches.sampler.steps_per_epoch
        self.updates_per_epoch = self.steps_per_epoch // cfg.train.grad_accum_steps

        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        student = build_student(cfg.student, self.num_classes, in_chans, cfg.data.img_size)
        self.params = count_params(student)
        self.gflops = forward_gflops(student, (in_chans, cfg.data.img_size, cfg.data.img_size))
        self.teacher = None
        if cfg.distill.type != "none":
            with acc.main_process_first():  # one rank reads or downloads the weights first
                self.teacher = load_teacher(cfg.teacher, self.num_classes, in_chans, train_set.mean, train_set.std)
            self.teacher.to(self.device)  # frozen and in eval mode; never passed to prepare (no DDP)
        self.global_batch = cfg.data.batch_size * self.world_size * cfg.train.grad_accum_steps
        self.lr = scaled_lr(cfg.train, self.global_batch)
        optimizer = build_optimizer(student, cfg.train, self.lr)
        scheduler = build_scheduler(optimizer, cfg.train, self.updates_per_epoch, self.world_size)
        if cfg.train.compile:
            student = torch.compile(student)
        self.student, self.optimizer, self.scheduler = acc.prepare(student, optimizer, scheduler)
        self.ema = None
        if cfg.train.ema:
            self.ema = ModelEmaV3(acc.unwrap_model(self.student), decay=cfg.train.ema_decay)
            acc.register_for_checkpointing(self.ema)
        self.progress = ckpt.Progress()
        acc.register_for_checkpointing(self.progress)
        self.criterion = DistillationLoss(build_criterion(self.augment.mixup is not None, cfg.data.label_smoothing),
                                          cfg.distill.type, cfg.distill.alpha, cfg.distill.tau)
        self.cache = None
        if cfg.distill.cache:
            self.cache = LogitCache(cache_root(cfg), cache_key(cfg, self.world_size, acc.mixed_precision),
                                    self.rank, self.world_size, self.steps_per_epoch)
        self.graphed = self._graphed_step() if cfg.train.cuda_graphs else None
        self.graphed_cached = self._graphed_step(cached_teacher=True) if self.graphed and self.cache else None

    def _graphed_step(self, cached_teacher: bool = False):
        from distill.graphed import GraphedStep, make_capturable

        cfg, acc = self.cfg, self.accelerator
        why = [w for w, bad in [
            ("a CUDA device", self.device.type != "cuda"), ("one process", self.world_size > 1),
            ("train.grad_accum_steps=1", cfg.train.grad_accum_steps > 1), ("not fp16", acc.mixed_precision == "fp16"),
            ("train.on_nonfinite=stop", cfg.train.on_nonfinite == "skip"), ("train.compile=false", cfg.train.compile),
            ("an in-memory dataset on the device", not isinstance(self.train_batches, DeviceBatches)
             or self.train_batches.images.device.type != "cuda")] if bad]
        if why:
            raise ConfigError(f"train.cuda_graphs=true needs {', '.join(why)}; set train.cuda_graphs=false")
        make_capturable(self.optimizer.optimizer, self.device)
        amp = {"bf16": torch.bfloat16}.get(acc.mixed_precision)
        return GraphedStep(acc.unwrap_model(self.student), self.teacher, self.criterion, self.augment,
                           self.optimizer.optimizer, amp, cfg.train.clip_grad, cached_teacher)

    def _batches(self, train_set, test_set):
        d = self.cfg.data
        sampler = ShardedBatches(len(train_set), d.batch_size, self.rank, self.world_size, self.aug_seed)
        if hasattr(train_set, "images"):  # in memory: on the training device, or kept on the host
            where = self.device if d.device_resident else torch.device("cpu")
            return (DeviceBatches(train_set, sampler, where), DeviceBatches(test_set, None, where, d.eval_batch_size))
        return (LoaderBatches(train_set, sampler, self.device, d.num_workers),
                LoaderBatches(test_set, None, self.device, d.num_workers, d.eval_batch_size))

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    # ---- loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        acc, cfg, p = self.accelerator, self.cfg, self.progress
        acc.init_trackers("tensorboard")
        if self.resume_from is not None:
            ckpt.load_checkpoint(acc, self.resume_from)
            if self.graphed is not None:  # loaded learning rates are plain numbers again
                from distill.graphed import make_capturable

                make_capturable(self.optimizer.optimizer, self.device)
            if acc.is_main_process:
                runlog.truncate_metrics(self.run_dir, p.epoch)
            acc.print(f"resumed from {self.resume_from} at epoch {p.epoch} step {p.step}")
        acc.print(f"{cfg.name}: {self.params / 1e6:.2f}M params, {self.world_size} process(es) on "
                  f"{self.device.type}, global batch {self.global_batch}, lr {self.lr:.2e}, "
                  f"{self.steps_per_epoch} steps/epoch")
        start = time.perf_counter() - p.wall_s
        result = {}
        while p.epoch < cfg.train.epochs:
            t0 = time.perf_counter()
            terms, n_steps = self._train_epoch(p.epoch, p.step)
            train_s = time.perf_counter() - t0
            last = p.epoch + 1 == cfg.train.epochs
            evaluated = self._end_epoch(terms, n_steps, train_s, t0, last or (p.epoch + 1) % cfg.train.eval_every == 0)
            result = evaluated if "top1" in evaluated else result
            p.wall_s = time.perf_counter() - start
            p.epoch, p.step = p.epoch + 1, 0
            if last or p.epoch % cfg.train.checkpoint_every == 0:
                ckpt.save_checkpoint(acc, self.run_dir, p.epoch * self.steps_per_epoch, cfg.train.keep_checkpoints,
                                     self.student)
        return self._finish(time.perf_counter() - start, result)

    def _train_epoch(self, epoch: int, start_step: int):
        acc, cfg = self.accelerator, self.cfg
        self.student.train()
        self.train_batches.sampler.set_epoch(epoch, start_step)
        self._verify_cache = self.cache is not None and self.cache.start_epoch(epoch, start_step, self.device)
        # loss sums of the epoch so far (restored from the checkpoint after a mid-epoch resume)
        sums = {k: torch.tensor(v, device=self.device) for k, v in self.progress.partial_sums.items()}
        n_steps, bad_step = self.progress.partial_steps, torch.full((), -1, device=self.device)
        bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", leave=False,
                   disable=not (acc.is_local_main_process and sys.stderr.isatty()), dynamic_ncols=True)
        t_last, step = time.perf_counter(), start_step
        for step, (images, labels, index) in enumerate(self.train_batches, start=start_step):
            terms = self._train_step(images, labels, index, epoch, step)
            if terms is not None:
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                finite = torch.isfinite(terms["loss"].detach())
                bad_step = torch.where(~finite & (bad_step < 0), epoch * self.steps_per_epoch + step, bad_step)
                n_steps += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == self.steps_per_epoch:
                self._check_finite(bad_step)  # the one host sync of an interval
                rate = cfg.train.log_every * self.global_batch / cfg.train.grad_accum_steps / (time.perf_counter() - t_last)
                t_last = time.perf_counter()
                loss = (sums["loss"] / max(n_steps, 1)).item() if sums else float("nan")
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                gstep = epoch * self.steps_per_epoch + done
                acc.log({"train/loss_running": loss, "train/lr": self._lr(),
                         "train/img_per_s": rate}, step=gstep)
            bar.update(1)
            if self._checkpoint_due(done):
                self._check_finite(bad_step)  # no non-finite weights reach a checkpoint
                p = self.progress
                p.step, p.partial_steps = done, n_steps
                p.partial_sums = {k: v.item() for k, v in sums.items()}
                ckpt.save_checkpoint(acc, self.run_dir, epoch * self.steps_per_epoch + done, cfg.train.keep_checkpoints,
                                     self.student)
                if self.stop_now:
                    raise Preempted(f"stopped by SIGTERM at epoch {epoch} step {done}; checkpoint saved in "
                                    f"{self.run_dir / ckpt.CHECKPOINTS}. Resume: the same command with train.resume=auto")
        bar.close()
        self._check_finite(bad_step)
        if self.cache is not None:
            self.cache.end_epoch(epoch)
        self.progress.partial_sums, self.progress.partial_steps = {}, 0
        return {k: (v / max(n_steps, 1)).item() for k, v in sums.items()}, step + 1 - start_step

    def _train_step(self, images, labels, index, epoch: int, step: int):
        """One micro-batch; returns the loss terms, or None when a non-finite step was skipped."""
        acc, cfg = self.accelerator, self.cfg
        # drop-path and other torch draws: a function of the position, so a resume replays them
        torch.manual_seed(hash32(cfg.seed * 0x9E3779B1 ^ hash32(epoch * 1_000_003 + step) ^ self.rank))
        if self.graphed is not None:
            mix = self.augment.mix_params(self.aug_seed, epoch, step, images.shape)
            salt = self.augment.salt(self.aug_seed, epoch)
            if self.cache is not None and self.cache.replay is not None:
                cached = self._cached_logits(images, labels, index, epoch, step)
                terms = self.graphed_cached(images, labels, index, salt, mix, cached)
            else:
                terms = self.graphed(images, labels, index, salt, mix)
                if self.cache is not None:
                    self.cache.put(step, self.graphed.teacher_out)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.student))
            return terms
        x, targets = self.augment(images, labels, index, self.aug_seed, epoch, step)
        with acc.accumulate(self.student):
            outputs = self.student(x)
            t_logits = None
            if self.cache is not None and self.cache.replay is not None:
                t_logits = self._cached_logits(images, labels, index, epoch, step, x)
            elif self.teacher is not None:
                with torch.no_grad(), acc.autocast():
                    t_logits = self.teacher(x)
                if self.cache is not None:
                    self.cache.put(step, t_logits)
            terms = self.criterion(outputs, targets, t_logits)
            if cfg.train.on_nonfinite == "skip" and self._skip_nonfinite(terms["loss"]):
                return None
            acc.backward(terms["loss"])
            if acc.sync_gradients and cfg.train.clip_grad:
                acc.clip_grad_norm_(self.student.parameters(), cfg.train.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and acc.sync_gradients:
            self.ema.update(acc.unwrap_model(self.student))
        return terms

    def _cached_logits(self, images, labels, index, epoch: int, step: int, x=None) -> torch.Tensor:
        """The teacher's logits for this step from the cache; the first step of an epoch is checked
        against the live teacher on a sample of its views (the teacher is in eval mode, so a sample's
        logits do not depend on the rest of the batch)."""
        cached = self.cache.get(step)
        if self._verify_cache:
            if x is None:
                x, _ = self.augment(images, labels, index, self.aug_seed, epoch, step)
            with torch.no_grad(), self.accelerator.autocast():
                live = self.teacher(x[:CHECK_SAMPLES])
            LogitCache.check(live, cached[:CHECK_SAMPLES], f"epoch {epoch} step {step}")
            self._verify_cache = False
        return cached

    def _lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])  # a tensor when the step is a CUDA graph

    def _skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """All ranks skip together; costs a host sync per step, hence opt-in."""
        bad = self.accelerator.reduce((~torch.isfinite(loss.detach())).float(), "max")
        if bad.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.skipped_steps += 1
            return True
        return False

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        bad = int(self.accelerator.reduce(bad_step.clone(), "max").item()) if self.world_size > 1 else int(bad_step.item())
        if bad >= 0:
            raise DivergenceError(
                f"loss became non-finite at step {bad} (epoch {bad // self.steps_per_epoch}); no checkpoint was "
                "written after it. Lower train.lr, set train.clip_grad, or set train.on_nonfinite=skip")

    def _checkpoint_due(self, done: int) -> bool:
        """A mid-epoch checkpoint every `checkpoint_every_steps`, or now because SIGTERM arrived."""
        cfg, acc = self.cfg, self.accelerator
        if done == self.steps_per_epoch or done % cfg.train.grad_accum_steps:
            return False  # the epoch-end checkpoint follows evaluation; never save mid-accumulation
        if self.world_size == 1:
            self.stop_now = self.stop_requested
        elif done % cfg.train.log_every == 0:
            # ranks must agree on where to stop: a collective, so only at the logging sync points
            flag = torch.tensor(float(self.stop_requested), device=self.device)
            self.stop_now = acc.reduce(flag, "max").item() > 0
        every = cfg.train.checkpoint_every_steps
        return self.stop_now or bool(every and done % every == 0)

    def _evaluate(self, model: torch.nn.Module, teacher=None) -> dict:
        """Test-set accuracy of `model`, this process's shard, summed over all processes."""
        from distill.loader import eval_shard

        acc = self.accelerator
        shard = eval_shard(self.test_size, self.rank, self.world_size)
        return evaluate(model, self.test_batches.iter_range(shard), self.normalize,
                        reduce=lambda t: acc.reduce(t, "sum"), teacher=teacher, autocast=acc.autocast)

    def _end_epoch(self, terms: dict, n_steps: int, train_s: float, epoch_t0: float, run_eval: bool) -> dict:
        acc, p = self.accelerator, self.progress
        metrics = self._evaluate(acc.unwrap_model(self.student)) if run_eval else {}
        if self.ema is not None and run_eval:
            metrics["ema_top1"] = self._evaluate(self.ema.module)["top1"]
        p.best_top1 = max(p.best_top1, metrics.get("top1", 0.0))
        img_s = n_steps * self.global_batch / self.cfg.train.grad_accum_steps / max(train_s, 1e-9)
        record = {"epoch": p.epoch, **{f"loss_{k}" if k != "loss" else "loss": v for k, v in terms.items()},
                  "lr": self._lr(), **metrics, "train_img_per_s": img_s,
                  "epoch_s": time.perf_counter() - epoch_t0}
        if acc.is_main_process:
            runlog.append_metrics(self.run_dir, record)
        acc.log({f"train/{k}": v for k, v in record.items() if k.startswith("loss")} |
                {f"eval/{k}": v for k, v in metrics.items() if k != "eval_samples"} |
                {"train/lr_epoch": record["lr"], "train/img_per_s_epoch": img_s}, step=(p.epoch + 1) * self.steps_per_epoch)
        accuracy = f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  " if metrics else ""
        acc.print(f"epoch {p.epoch + 1}/{self.cfg.train.epochs}  loss {terms.get('loss', float('nan')):.4f}  "
                  f"{accuracy}{img_s:.0f} img/s  {record['epoch_s']:.1f}s")
        return record

    def _finish(self, wall_s: float, last: dict) -> dict:
        acc, cfg = self.accelerator, self.cfg
        student = acc.unwrap_model(self.student)
        summary = {}
        if self.teacher is not None:  # how often the final student agrees with its teacher
            summary["teacher_agreement"] = self._evaluate(student, teacher=self.teacher)["teacher_agreement"]
        if acc.is_main_process:
            ckpt.save_weights_atomic(student.state_dict(), self.run_dir / "student.safetensors")
            if self.ema is not None:
                ckpt.save_weights_atomic(self.ema.module.state_dict(), self.run_dir / "student_ema.safetensors")
            history = runlog.read_metrics(self.run_dir)
            summary = {
                "name": cfg.name, "best_top1": max(r["top1"] for r in history if "top1" in r), "final_top1": last.get("top1"),
                "final_top5": last.get("top5"), "epochs": cfg.train.epochs, "params": self.params,
                "gflops": self.gflops,
                "world_size": self.world_size, "global_batch": self.global_batch, "lr": self.lr,
                "wall_s": wall_s, "train_img_per_s": sum(r["train_img_per_s"] for r in history) / len(history),
                "student": cfg.student.model, "teacher": cfg.teacher.model if self.teacher is not None else None,
                "distill_type": cfg.distill.type, "seed": cfg.seed, "dataset": cfg.data.name,
                "skipped_steps": self.progress.skipped_steps, **summary,
                **{k: last[k] for k in ("top1_cls", "top1_dist", "ema_top1") if k in last},
                **runlog.provenance(self.device, self.world_size),
            }
            runlog.write_json_atomic(self.run_dir / runlog.SUMMARY, summary)
        acc.end_training()
        return summary
