"""Trackers through Accelerate (`train.log_with`), for real and offline: MLflow in a local SQLite store,
W&B in offline mode, each read back with its own client or record format; a resume continues their runs."""
import dataclasses
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from conftest import PLAIN, ROOT, in_fp32, needs_fmnist, run_cli
from distill.cli import main
from distill.recipe import load_config
from distill.errors import ConfigError
from distill.runs import trackers

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")  # MLflow's store

NAME = "tracked"
TINY = ["data.train_subset=256", "data.test_subset=100", "data.batch_size=32", "train.epochs=1",
        "train.log_every=4", "train.warmup_epochs=0"]  # 8 steps: the running terms at steps 4 and 8
# Nothing leaves the machine: W&B offline, no git or code capture, no system stats or error reports;
# no MLflow telemetry.
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
           "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true", "WANDB_ERROR_REPORTING": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def stores(folder: Path) -> dict:
    """The environment of a run whose MLflow store and W&B runs live in `folder`."""
    return {**OFFLINE, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "WANDB_DIR": str(folder)}


def train(out: Path, *overrides):
    return run_cli("train", PLAIN, f"output_dir={out}", f"name={NAME}", *TINY, *overrides, env=stores(out))


def refused(out: Path, monkeypatch, capsys, *overrides) -> list:
    """`distill train` refusing its overrides, in-process (`main` returns the exit status; a traceback would
    escape it): its stderr lines. A subprocess would only add ~6 s of imports before the same check."""
    for k, v in stores(out).items():
        monkeypatch.setenv(k, v)
    status = main(in_fp32(["train", str(ROOT / PLAIN), f"output_dir={out}", f"name={NAME}", *TINY, *overrides]))
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    return err.strip().splitlines()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run logged to TensorBoard, MLflow and W&B at once; the folder holding the run and both stores."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("tracked")
    res = train(out, "train.log_with=[tensorboard,mlflow,wandb]")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture
def mlflow_client(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    from mlflow.tracking import MlflowClient

    return lambda folder: MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")


def tensorboard_tags(run_dir: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))  # the loop's events; the config's are in a subfolder
    acc.Reload()
    return set(acc.Tags()["scalars"])


def wandb_records(path: Path):
    """The records of a `.wandb` file, parsed with W&B's own protobuf schema. The file is a LevelDB-style
    log (W&B's transaction log): a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte
    header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(folder: Path) -> dict:
    """What W&B's offline run of `folder` holds: its name, config, and history rows by step."""
    run_id = json.loads((folder / NAME / trackers.IDS).read_text())["wandb"]
    logs = sorted(folder.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert logs, f"no offline W&B run {run_id} under {folder / 'wandb'}"
    run = {"id": run_id, "logs": len(logs), "config": {}, "history": {}}
    for record in wandb_records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"] = record.run.display_name
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            run["history"][record.history.step.num] = row
    return run


@needs_fmnist
@pytest.mark.slow
def test_mlflow_run_holds_the_config_every_term_and_the_summary(tracked, mlflow_client):
    client = mlflow_client(tracked)
    run = client.get_run(json.loads((tracked / NAME / trackers.IDS).read_text())["mlflow"])
    assert run.info.run_name == NAME and client.get_experiment(run.info.experiment_id).name == trackers.PROJECT
    assert set(run.data.metrics) == tensorboard_tags(tracked / NAME)  # every term TensorBoard gets, and no other
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_running")] == [4, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [8]
    params = run.data.params
    assert params["data.train_subset"] == "256" and params["train.log_with"] == "['tensorboard', 'mlflow', 'wandb']"
    assert params["name"] == NAME and float(params["train.lr"]) == load_config(str(ROOT / PLAIN)).train.lr
    summary = json.loads((tracked / NAME / "summary.json").read_text())
    assert run.data.metrics["summary/final_top1"] == summary["final_top1"]
    assert run.data.metrics["summary/params"] == summary["params"]


@needs_fmnist
@pytest.mark.slow
def test_wandb_offline_run_holds_the_config_every_term_and_the_summary(tracked):
    run = wandb_run(tracked)
    assert run["name"] == NAME and run["logs"] == 1
    assert run["config"]["data.train_subset"] == 256 and run["config"]["name"] == NAME
    assert [step for step, row in sorted(run["history"].items()) if "train/loss_running" in row] == [4, 8]
    last = run["history"][8]
    assert tensorboard_tags(tracked / NAME) <= set(last)  # the epoch's terms and the summary share the last step
    summary = json.loads((tracked / NAME / "summary.json").read_text())
    assert last["summary/final_top1"] == summary["final_top1"] and last["train/loss"] > 0


@needs_fmnist
@pytest.mark.slow
def test_resume_continues_the_same_mlflow_and_wandb_runs(tracked, tmp_path, mlflow_client):
    copy = tmp_path / "copy"  # the run and both stores, moved, so that the other tests keep theirs
    shutil.copytree(tracked, copy)
    ids = json.loads((copy / NAME / trackers.IDS).read_text())
    res = train(copy, "train.log_with=[tensorboard,mlflow,wandb]", "train.epochs=2", "train.resume=auto")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((copy / NAME / trackers.IDS).read_text()) == ids
    client = mlflow_client(copy)
    runs = client.search_runs([client.get_experiment_by_name(trackers.PROJECT).experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]] and runs[0].info.run_name == NAME
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss_running")] == [4, 8, 12, 16]
    assert runs[0].data.params["train.epochs"] == "1"  # a continued run keeps the values a resume may change
    assert wandb_run(copy)["logs"] == 2  # W&B offline: a second log of the same run id, merged when synced


def test_unknown_tracker_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    lines = refused(tmp_path, monkeypatch, capsys, "train.log_with=[tensorboard,neptune]")
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: train.log_with='neptune' is not a tracker") and "wandb, mlflow" in lines[0]
    assert not (tmp_path / NAME).exists()


def test_missing_tracker_package_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    missing = next((n for n, t in trackers.TRACKERS.items() if not t.available()), None)
    if missing is None:
        pytest.skip("every tracker Accelerate drives is installed here")
    lines = refused(tmp_path, monkeypatch, capsys, f"train.log_with=[tensorboard,{missing}]")
    assert len(lines) == 1, lines
    assert lines[0] == (f"error: train.log_with: {missing} is not installed; {trackers.TRACKERS[missing].install}, "
                        f"or remove it from train.log_with")
    assert not (tmp_path / NAME).exists()


def test_missing_wandb_or_mlflow_names_the_extra(tmp_path, monkeypatch):
    for name in ("wandb", "mlflow"):
        absent = dataclasses.replace(trackers.TRACKERS[name], available=lambda: False)
        monkeypatch.setitem(trackers.TRACKERS, name, absent)
    with pytest.raises(ConfigError, match=re.escape(f"wandb, mlflow are not installed; {trackers.EXTRA}, or remove")):
        trackers.log_with(["tensorboard", "wandb", "mlflow"], tmp_path)


def test_log_with_takes_a_name_or_a_list_of_the_trackers_accelerate_drives():
    assert set(trackers.TRACKERS) <= set(LOGGER_TYPE_TO_CLASS)
    assert all(LOGGER_TYPE_TO_CLASS[n].name == n for n in trackers.TRACKERS)
    assert load_config(None).train.log_with == ["tensorboard"]
    assert load_config(None, ["train.log_with=mlflow"]).train.log_with == ["mlflow"]
    assert load_config(None, ["train.log_with=[wandb,tensorboard,wandb]"]).train.log_with == ["wandb", "tensorboard"]
    assert load_config(None, ["train.log_with=[]"]).train.log_with == []
    with pytest.raises(ConfigError, match=r"^train.log_with=3 is not a tracker"):
        load_config(None, ["train.log_with=3"])


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed (connecting to it is refused at once)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online_wandb_without_a_key(tmp_path, monkeypatch):
    """W&B online with no key anywhere it looks, its server on a closed loopback port: nothing leaves the
    machine. Its settings singleton is torn down after, so other in-process runs read their own."""
    wandb = pytest.importorskip("wandb")
    for k in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(k, raising=False)
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "NETRC": str(tmp_path / "no_netrc"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config")}
    yield env
    wandb.teardown()


def train_with_online_wandb(tmp_path, monkeypatch, capsys, env: dict):
    """A plain run logging to W&B online with `env` (no key), in this process: (exit status, stderr lines)."""
    for k, v in {**stores(tmp_path), **env}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_MODE", "online")
    status = main(in_fp32(["train", str(ROOT / PLAIN), f"output_dir={tmp_path}", f"name={NAME}", *TINY,
                           "train.log_with=wandb"]))
    return status, capsys.readouterr().err.strip().splitlines()


def test_online_wandb_without_a_key_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys,
                                                                   online_wandb_without_a_key):
    """It was W&B's UsageError traceback, after the run folder was made (so the rerun was refused)."""
    status, lines = train_with_online_wandb(tmp_path, monkeypatch, capsys, online_wandb_without_a_key)
    assert status == 2 and len(lines) == 1, lines
    assert "wandb login" in lines[0] and "WANDB_MODE=offline" in lines[0], lines
    assert not (tmp_path / NAME).exists()


def test_an_mlflow_server_that_does_not_answer_is_one_line_at_once(tmp_path, monkeypatch, capsys):
    """An http tracking URI on a closed loopback port: refused before the folder, in seconds (MLflow's
    start retried for minutes, then left a folder holding only config.yaml)."""
    pytest.importorskip("mlflow")
    import time
    for k, v in stores(tmp_path).items():
        monkeypatch.setenv(k, v)
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.perf_counter()
    status = main(["train", str(ROOT / PLAIN), f"output_dir={tmp_path}", f"name={NAME}", *TINY, "train.log_with=mlflow"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: train.log_with=mlflow: MLflow's tracking server {uri} does not answer"), lines
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / NAME).exists()


def test_a_tracker_that_fails_to_start_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys,
                                                                        online_wandb_without_a_key):
    """What the checks before the folder cannot see (here W&B's own refusal, the check switched off) ends in
    one line, and the new folder goes, so that the corrected command is not refused as 'already exists'."""
    monkeypatch.setitem(trackers.TRACKERS, "wandb", dataclasses.replace(trackers.TRACKERS["wandb"],
                                                                        unready=lambda: None))
    status, lines = train_with_online_wandb(tmp_path, monkeypatch, capsys, online_wandb_without_a_key)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: train.log_with: a tracker could not start (UsageError"), lines
    assert not (tmp_path / NAME).exists()
