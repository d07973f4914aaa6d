"""The run folder `<output_dir>/<name>/`: created once, never overwritten, resumable."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from distill.config import Config, may_differ_on_resume, to_yaml
from distill.errors import ConfigError
from distill.runs import checkpoint as ckpt
from distill.runs import durable, records


class RunComplete(Exception):
    """`train.resume=auto` on a finished run: nothing to do."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_run(cfg: Config, run_dir: Path) -> None:
    saved = _flat(OmegaConf.to_container(OmegaConf.load(run_dir / records.CONFIG)))
    if saved.get("data.aug_seed") is None:  # written before aug_seed was resolved at load: it meant `seed`
        saved["data.aug_seed"] = saved.get("seed")
    now, may_differ = _flat(OmegaConf.to_container(OmegaConf.structured(cfg))), may_differ_on_resume()
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # keys added since: their default
    diff = [k for k, v in now.items() if k not in may_differ and saved.get(k) != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"{k}={now[k]!r} differs from the run being resumed ({saved.get(k)!r} in "
                          f"{run_dir / records.CONFIG}); resume with the same settings or start a new run with name=...")


def resolve_run_dir(accelerator, cfg: Config, run_dir: Path) -> Optional[Path]:
    """Check the run folder before anything is built: refuse to overwrite, find the checkpoint to resume."""
    resume = cfg.train.resume
    exists = (run_dir / records.CONFIG).exists()
    if exists and resume == "":
        raise ConfigError(f"run folder {run_dir} already exists; continue it with train.resume=auto, "
                          "or start a new run with name=<new name>")
    if exists and resume == "auto" and (run_dir / records.SUMMARY).exists():
        raise RunComplete(f"run {run_dir} is already complete (see {run_dir / records.SUMMARY})")
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
    accelerator.wait_for_everyone()
