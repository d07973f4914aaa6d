"""Experiment trackers, through Accelerate: `train.log_with` names them (TensorBoard by default).

One registry entry per tracker Accelerate drives: how to tell it is installed (Accelerate's own
check; a tracker it finds missing it drops without a word, so here a missing one is refused in one
line before the run folder is made), how to install it, and how its run is named after the run
folder and continued by a resume. A tracker run that can be continued (W&B, MLflow) has its id
saved in the run folder's `trackers.json`; `train.resume` passes it back.

Every tracker gets what TensorBoard gets: the resolved config (flat, dotted keys), every term the
loop logs, and the run's summary at the end (`summary/<key>`, the numbers of summary.json).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlparse

from accelerate.tracking import TensorBoardTracker
from accelerate.utils import (is_aim_available, is_clearml_available, is_comet_ml_available, is_dvclive_available,
                              is_mlflow_available, is_swanlab_available, is_tensorboard_available,
                              is_trackio_available, is_wandb_available)

from distill.errors import ConfigError, first_line
from distill.runs import records

PROJECT = "distill"  # W&B's project, MLflow's experiment (MLFLOW_EXPERIMENT_NAME wins), ClearML's project, ...
IDS = "trackers.json"  # in the run folder: {"wandb": "<run id>", "mlflow": "<run id>"}, the runs a resume continues
EXTRA = 'pip install -e ".[trackers]"'


def _new_run(name: str, run_id: Optional[str]) -> dict:
    return {}


PROBE_S = 5  # how long a tracker's server may take to answer the check before the run folder is made
# While the trackers start: at most this many retries of MLflow's HTTP requests, each bounded (its defaults
# retry for minutes), and W&B's own bound on its start. A user's own setting of either wins.
START_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "WANDB_INIT_TIMEOUT": "60"}


def _unreachable(url: str) -> Optional[str]:
    """Why the server at `url` gives no answer to one request within PROBE_S seconds, or None. Any HTTP
    answer counts (a 401 or 404 is a server that is there)."""
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_S).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:  # refused, DNS, timeout, TLS (URLError is an OSError), a malformed URL
        return str(getattr(e, "reason", None) or first_line(e))
    return None


def _wandb_unready() -> Optional[str]:
    """Online W&B without an API key (its start is a UsageError traceback), or with a server that does not
    answer (its start hangs); None offline or when it can start. Settings as W&B reads them: the
    environment and its settings files (`wandb offline`)."""
    import wandb
    settings = wandb.setup().settings
    if settings.mode in ("offline", "dryrun", "disabled"):
        return None
    key = settings.api_key or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if not key:
        try:  # `wandb login` stores the key in ~/.netrc (or $NETRC); W&B's reader, where this version has it
            from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
            key = read_netrc_auth(host=settings.base_url)
        except Exception:  # noqa: BLE001 (another W&B version, an unreadable netrc: let W&B decide)
            return None
    if not key:
        return ("W&B is online but has no API key: run `wandb login` (or set WANDB_API_KEY), or log offline "
                "with WANDB_MODE=offline")
    why = _unreachable(settings.base_url)
    return why and (f"W&B's server {settings.base_url} does not answer ({why}): check the network, or log "
                    "offline with WANDB_MODE=offline (and `wandb sync` later)")


def _mlflow_unready() -> Optional[str]:
    """An http(s) MLflow tracking URI whose server does not answer (its start retries for minutes); None
    for a local store or a server that answers."""
    import mlflow
    uri = mlflow.get_tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    why = _unreachable(uri)
    return why and (f"MLflow's tracking server {uri} does not answer ({why}): start it, or point "
                    "MLFLOW_TRACKING_URI at one that runs (or at a local store, sqlite:///mlflow.db)")


def _comet_run(name: str, run_id: Optional[str]) -> dict:
    import comet_ml  # only when comet_ml is asked for (and installed)

    return {"experiment_config": comet_ml.ExperimentConfig(name=name)}


@dataclass(frozen=True)
class Tracker:
    """One of Accelerate's trackers.

    `run(name, run_id)`: the keyword arguments Accelerate hands the tracker for a run named `name`,
    continuing the tracker's run `run_id` (None: a new run). `run_id(tracker)`: the started tracker's
    id, saved for a resume; None where the tracker cannot continue a run. `named(tracker, name)`:
    names a started run where no argument can (Aim, which Accelerate names after the project).
    `unready()`: why the tracker cannot start here (one line), checked before the run folder is made;
    None where it can, or where nothing can be checked before it starts."""

    available: Callable[[], bool]
    install: str
    run: Callable[[str, Optional[str]], dict] = _new_run
    run_id: Optional[Callable[[Any], str]] = None
    named: Optional[Callable[[Any, str], None]] = None
    unready: Callable[[], Optional[str]] = lambda: None


TRACKERS: Dict[str, Tracker] = {
    # in the run folder's tensorboard/ (see `log_with`): the run folder names it
    "tensorboard": Tracker(is_tensorboard_available, "pip install tensorboard"),
    "wandb": Tracker(is_wandb_available, EXTRA,
                     run=lambda name, run_id: {"name": name, **({"id": run_id, "resume": "allow"} if run_id else {})},
                     run_id=lambda t: t.tracker.id, unready=_wandb_unready),
    # Accelerate's MLflowTracker passes run_id to mlflow.start_run, which continues that run
    "mlflow": Tracker(is_mlflow_available, EXTRA, run=lambda name, run_id: {"run_name": name, "run_id": run_id},
                      run_id=lambda t: t.tracker.info.run_id, unready=_mlflow_unready),
    "trackio": Tracker(is_trackio_available, "pip install trackio", run=lambda name, run_id: {"name": name}),
    "aim": Tracker(is_aim_available, 'pip install "aim<4"', named=lambda t, name: setattr(t.tracker, "name", name)),
    "comet_ml": Tracker(is_comet_ml_available, "pip install comet_ml", run=_comet_run),
    "clearml": Tracker(is_clearml_available, "pip install clearml", run=lambda name, run_id: {"task_name": name}),
    "dvclive": Tracker(is_dvclive_available, "pip install dvclive", run=lambda name, run_id: {"exp_name": name}),
    "swanlab": Tracker(is_swanlab_available, "pip install swanlab",
                       run=lambda name, run_id: {"experiment_name": name}),
}


def log_with(names: List[str], run_dir: Path) -> list:
    """Accelerate's `log_with` for `train.log_with`, once every tracker named is installed (else one line
    that says how to install it) and can start as far as can be told before it does (`Tracker.unready`).
    TensorBoard is handed over built, writing to the run folder's `tensorboard/`: built by name,
    Accelerate would name its folder after the project."""
    missing = [n for n in names if not TRACKERS[n].available()]
    if missing:
        how = "; ".join(dict.fromkeys(TRACKERS[n].install for n in missing))
        raise ConfigError(f"train.log_with: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                          f"installed; {how}, or remove {'it' if len(missing) == 1 else 'them'} from train.log_with")
    for n in names:
        why = TRACKERS[n].unready()
        if why:
            raise ConfigError(f"train.log_with={n}: {why}")
    return [TensorBoardTracker("tensorboard", str(run_dir)) if n == "tensorboard" else n for n in names]


def _saved_ids(run_dir: Path) -> dict:
    path = run_dir / IDS
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # written atomically, so only a hand edit gets here
        raise ConfigError(f"{path} is not valid JSON; delete it to start new tracker runs on resume") from None


def start(accelerator, run_dir: Path, name: str, names: List[str], config: dict, unchanged: Optional[dict]) -> None:
    """Start the trackers `names` for the run `name` and hand each the flat `config`.

    `unchanged` is None for a new run; for a resumed run, the keys a resume cannot change. A tracker
    run the resume continues (its id in `trackers.json`) records only those again: the others
    (train.epochs, train.resume, paths) keep the values it holds, which MLflow refuses to change."""
    ids = _saved_ids(run_dir) if unchanged is not None else {}
    try:
        with _start_bounds():
            accelerator.init_trackers(PROJECT, init_kwargs={n: TRACKERS[n].run(name, ids.get(n)) for n in names})
    except Exception as e:  # noqa: BLE001 (W&B's UsageError and CommError, MLflow's exceptions, a timeout, ...)
        # one line; as a UserError it also removes the new run folder (`discard_if_unstarted`)
        raise ConfigError(f"train.log_with: a tracker could not start ({type(e).__name__}: {first_line(e)[:200]}); "
                          "fix it, or remove it from train.log_with") from None
    if not accelerator.is_main_process:  # the trackers run on the main process only
        return
    for tracker in accelerator.trackers:
        entry = TRACKERS[tracker.name]
        if entry.named is not None:
            entry.named(tracker, name)
        tracker.store_init_configuration(tracker_values(unchanged if ids.get(tracker.name) else config))
        if entry.run_id is not None:
            ids[tracker.name] = entry.run_id(tracker)
    if ids:
        records.write_json_atomic(run_dir / IDS, {**_saved_ids(run_dir), **ids})


@contextmanager
def _start_bounds():
    """START_BOUNDS in the environment while the trackers start, where the user has not set them."""
    added = {k: v for k, v in START_BOUNDS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def tracker_values(flat: dict) -> dict:
    """Config values as every tracker takes them: numbers, strings, booleans and None; a list as its text."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def summary_values(summary: dict) -> dict:
    """The numbers of summary.json as `summary/<key>`, logged to every tracker at the last step."""
    return {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
