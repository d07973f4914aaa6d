"""`distill export`: a run's student in timm's hub layout, rebuilt by timm alone in a fresh process."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.models import build_student
from distill.cli import main
from distill.config import to_yaml
from distill.recipe import load_config
from distill.errors import ConfigError
from distill.commands.export import export_run

from conftest import ROOT

RECIPES = {False: "recipes/fashion_mnist/plain_tiny.yaml", True: "recipes/fashion_mnist/hard_tiny.yaml"}

# Runs in a fresh interpreter: only timm, torch, safetensors and the students package, never distill.
LOAD_WITH_TIMM_ALONE = """
import json, sys
import torch, timm
from safetensors.torch import save_file
import students
x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
cfgs = {}
for out in sys.argv[1:]:
    model = timm.create_model("local-dir:" + out, pretrained=True).eval()
    with torch.no_grad():
        save_file({"logits": model(x)}, out + "/logits_by_timm.safetensors")
    cfgs[out] = {k: model.pretrained_cfg[k] for k in ("input_size", "mean", "std", "num_classes")}
assert not [m for m in sys.modules if m == "distill" or m.startswith("distill.")], "distill was imported"
print(json.dumps(cfgs))
"""


def fake_run(tmp_path, name, distilled=False, prefix="", seed=0):
    """A run folder as the trainer leaves it: config.yaml and student.safetensors (random weights)."""
    run = tmp_path / name
    run.mkdir()
    cfg = load_config(RECIPES[distilled], [f"output_dir={tmp_path}", f"name={name}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(seed)
    model = build_student(cfg.student, 10, 1, cfg.data.img_size).eval()
    save_file({prefix + k: v for k, v in model.state_dict().items()}, str(run / "student.safetensors"))
    return run, model


@pytest.mark.slow  # a fresh interpreter importing torch and timm: ~5 s; test_cli_export covers the command
def test_timm_alone_rebuilds_the_exported_students(tmp_path):
    cases = {"plain": dict(), "distilled": dict(distilled=True), "compiled": dict(prefix="_orig_mod.")}
    outs, originals = {}, {}
    for name, kwargs in cases.items():
        run, originals[name] = fake_run(tmp_path, name, **kwargs)
        outs[name] = export_run(run, tmp_path / "export" / name)
        assert sorted(p.name for p in outs[name].iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((outs["distilled"] / "config.json").read_text())
    assert config["architecture"] == "distill_vit_tiny" and config["num_classes"] == 10
    assert config["model_args"]["distilled"] is True and config["model_args"]["in_chans"] == 1
    assert config["pretrained_cfg"]["classifier"] == ["head", "head_dist"]
    res = subprocess.run([sys.executable, "-c", LOAD_WITH_TIMM_ALONE, *map(str, outs.values())], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cfgs = json.loads(res.stdout.strip().splitlines()[-1])
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, out in outs.items():
        with torch.no_grad():
            expected = originals[name](x)  # eval: a distilled student averages its two heads
        assert torch.equal(load_file(str(out / "logits_by_timm.safetensors"))["logits"], expected), name
        # Fashion-MNIST's own normalisation, not the model's default 0.5
        assert cfgs[str(out)] == dict(input_size=[1, 32, 32], mean=[0.286], std=[0.353], num_classes=10)
    assert not torch.equal(originals["plain"](x), originals["distilled"](x))


def test_ema_weights_and_refusals(tmp_path):
    run, _ = fake_run(tmp_path, "run")
    with pytest.raises(ConfigError, match="has no EMA weights: it trained with train.ema=false"):
        export_run(run, tmp_path / "ema", ema=True)
    _, ema_model = fake_run(tmp_path, "ema_src", seed=1)
    save_file(ema_model.state_dict(), str(run / "student_ema.safetensors"))
    out = export_run(run, tmp_path / "ema", ema=True)
    exported = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in ema_model.state_dict().items())

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="taken already exists and is not empty: export into a new folder"):
        export_run(run, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert (export_run(run, tmp_path / "empty") / "model.safetensors").is_file()  # an empty folder is fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_cli_export(tmp_path, capsys):
    run, _ = fake_run(tmp_path, "run")
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert main(["export", str(run), str(tmp_path / "out")]) == 2  # refuses to overwrite: one line
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not empty" in err
    assert main(["export", str(tmp_path), str(tmp_path / "out2")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


@pytest.mark.parametrize("model, extra", [("resnet18", []), ("convit_tiny", ["student.patch_size=4"])])
def test_an_exported_timm_student_describes_its_run_not_imagenet(tmp_path, model, extra):
    """timm's data config of the export is the run's: 32 px, 1 channel, Fashion-MNIST's mean/std, 10 classes;
    no ImageNet test size, no hub tag (a resnet18 kept input_size 224, test_input_size 288, tag a1_in1k)."""
    import timm
    from timm.data import resolve_data_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(RECIPES[False], [f"output_dir={tmp_path}", "name=run", f"student.model={model}", *extra])
    (run / "config.yaml").write_text(to_yaml(cfg))
    save_file(build_student(cfg.student, 10, 1, 32).state_dict(), str(run / "student.safetensors"))
    out = export_run(run, tmp_path / "export")
    pretrained = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "test_input_size", "hf_hub_id", "url"} & set(pretrained), pretrained
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    data = resolve_data_config(model=loaded)
    assert (tuple(data["input_size"]), tuple(data["mean"]), tuple(data["std"])) == ((1, 32, 32), (0.286,), (0.353,)), data
    assert loaded.pretrained_cfg["num_classes"] == 10 and loaded.num_classes == 10
