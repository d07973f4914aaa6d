"""The run folder `<output_dir>/<name>/`: created once, never overwritten, resumable."""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple

from omegaconf import OmegaConf

from distill.config import Config, flat_dict, may_differ_on_resume, to_yaml
from distill.errors import ConfigError, UserError
from distill.methods import plugins
from distill.runs import checkpoint as ckpt
from distill.runs import durable, records


class RunComplete(Exception):
    """`train.resume=auto` on a finished run with the same settings and epochs: nothing to do."""


def differing_key(cfg: Config, run_dir: Path, may_differ: set) -> Optional[Tuple[str, object, object]]:
    """The first key outside `may_differ` whose value in `cfg` differs from the run's config.yaml:
    (key, value in cfg, saved value), or None when the run was made with these settings."""
    saved = flat_dict(OmegaConf.to_container(OmegaConf.load(run_dir / records.CONFIG)))
    if saved.get("data.aug_seed") is None:  # written before aug_seed was resolved at load: it meant `seed`
        saved["data.aug_seed"] = saved.get("seed")
    now = flat_dict(OmegaConf.to_container(OmegaConf.structured(cfg)))
    defaults = flat_dict(OmegaConf.to_container(OmegaConf.structured(type(cfg))))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # keys added since: their default
    return next(((k, v, saved.get(k)) for k, v in now.items() if k not in may_differ and saved.get(k) != v), None)


def _check_same_run(cfg: Config, run_dir: Path) -> None:
    found = differing_key(cfg, run_dir, may_differ_on_resume())
    if found:
        k, now, saved = found
        raise ConfigError(f"{k}={now!r} differs from the run being resumed ({saved!r} in "
                          f"{run_dir / records.CONFIG}); resume with the same settings or start a new run with name=...")
    plugins.check_unchanged(run_dir)  # the same settings, and the same plugin code behind them


def read_summary(run_dir: Path) -> Optional[dict]:
    """The run's summary.json (written once it finished), or None."""
    path = run_dir / records.SUMMARY
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:  # written atomically, so only a hand edit or a damaged disk gets here
        raise ConfigError(f"{path} is not valid JSON; delete it, and train.resume=auto writes it again") from None


def _finished_run(accelerator, cfg: Config, run_dir: Path, summary: dict) -> None:
    """`train.resume=auto` on a finished run, after its config matched: RunComplete at the epochs it
    ran, an error for fewer, and for more epochs a note that the run is extended (then it resumes)."""
    done, want = summary.get("epochs", cfg.train.epochs), cfg.train.epochs
    new_run = f"start a new run with name=<new name>, or train.epochs={done} to keep this one"
    if want == done:
        raise RunComplete(f"run {run_dir} is already complete (see {run_dir / records.SUMMARY})")
    if want < done:
        raise ConfigError(f"train.epochs={want} is fewer than the {done} epochs run {run_dir} finished, and a "
                          f"finished run cannot be shortened; {new_run}")
    if ckpt.latest_checkpoint(run_dir) is None:
        raise ConfigError(f"run {run_dir} finished {done} epochs but has no checkpoint to extend it from; {new_run}")
    # The run continues from its last checkpoint (weights, optimizer, EMA, step, RNG). The schedule is a
    # pure function of the step laid out over train.epochs (`build_scheduler`), so it is laid out again
    # over the new total: the cosine that reached min_lr at epoch `done` now stands about done/want of
    # the way along the longer one, and the lr rises back to that point, a warm restart. The result is
    # not a `want`-epoch run from the start; summary.json says so (`extended_from_epochs`, `extension`).
    accelerator.print(f"train.resume=auto: extending {run_dir} from {done} to {want} epochs; the lr schedule is "
                      f"laid out again over {want} epochs and continues from the current step (a warm restart, "
                      f"not a {want}-epoch run from the start; summary.json records extended_from_epochs)")


def extension(run_dir: Path, epochs: int) -> dict:
    """For summary.json, once a run finishes `epochs`: `extended_from_epochs`, the epoch counts it had
    finished before (oldest first) if it extends a finished run, else nothing."""
    old = read_summary(run_dir)
    if old is None or old.get("epochs", epochs) >= epochs:
        return {}
    return {"extended_from_epochs": [*old.get("extended_from_epochs", []), old["epochs"]]}


def resolve_run_dir(accelerator, cfg: Config, run_dir: Path) -> Optional[Path]:
    """Check the run folder before anything is built: refuse to overwrite, find the checkpoint to resume."""
    resume = cfg.train.resume
    exists = (run_dir / records.CONFIG).exists()
    if exists and resume == "":
        raise ConfigError(f"run folder {run_dir} already exists; continue it with train.resume=auto, "
                          "or start a new run with name=<new name>")
    summary = read_summary(run_dir) if exists and resume == "auto" else None
    if summary is not None:  # a finished run is compared first, as an unfinished one is
        _check_same_run(cfg, run_dir)
        _finished_run(accelerator, cfg, run_dir, summary)
    try:  # the honest test of writability is to write (permission bits say little to root)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir.parent):
            pass
    except OSError as e:
        raise ConfigError(f"output_dir={cfg.output_dir} is not writable ({e.strerror}); "
                          "set output_dir to a writable folder") from None
    if exists:
        _check_same_run(cfg, run_dir)
    if resume == "auto":
        found = ckpt.latest_checkpoint(run_dir)
        if found is None and exists:
            accelerator.print(f"train.resume=auto: {run_dir} has no complete checkpoint; starting from the beginning")
        return found
    return Path(resume) if resume else None


def create_run_dir(accelerator, cfg: Config, run_dir: Path) -> None:
    """Write the resolved config of a new run, once everything it needs has been built."""
    accelerator.wait_for_everyone()  # every rank has looked before the main rank creates anything
    if accelerator.is_main_process and not (run_dir / records.CONFIG).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        durable.write_text(run_dir / records.CONFIG, to_yaml(cfg), str(run_dir / records.CONFIG))
        plugins.write_record(run_dir, cfg.distill.type, cfg.plugins, lambda p, t: durable.write_text(p, t, str(p)))
    accelerator.wait_for_everyone()


@contextmanager
def discard_if_unstarted(accelerator, run_dir: Path, new: bool):
    """Around the training of a run: if it stops on a user error (`UserError`) before its first
    complete checkpoint, and this command made its folder (`new`), the folder is removed.

    Why both this and building first: everything that can be checked is, before the folder exists
    (`Trainer.__init__` builds data, student and teacher, then calls `create_run_dir`). What remains
    shows only when used: a corrupt image when its batch is decoded, a loss that is non-finite at the
    first steps. Checking those up front would cost an epoch (every image decoded, steps run twice).
    A folder with no checkpoint holds nothing to resume; left behind, it would make the corrected
    command stop with "run folder already exists"."""
    try:
        yield
    except UserError:
        if new and accelerator.is_main_process and ckpt.latest_checkpoint(run_dir) is None:
            for tracker in accelerator.trackers:  # close TensorBoard's writer before its folder goes
                try:
                    tracker.finish()
                except Exception:  # noqa: BLE001 (a tracker whose start failed has nothing to close)
                    pass
            durable.remove(run_dir)
        raise
