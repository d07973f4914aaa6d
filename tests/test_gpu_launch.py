"""The GPU entry points start as documented on a machine set up by `make setup`: launch.sh refuses a GPU
that torch cannot see (an old driver) instead of training on the CPU unasked, and the GPU scripts take the
project's venv and the repo's recipes from any working directory. Checked with stand-ins: no GPU needed."""
import importlib.util
import os
import shutil
import subprocess

from conftest import PLAIN, ROOT


def _stub(path, body: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def _launch(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    _stub(bin_dir / "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"')
    python = _stub(tmp_path / "py" / "python", "echo 0")  # torch's answer: no GPU
    full = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    full.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=python, **env)
    return subprocess.run([str(ROOT / "launch.sh"), PLAIN], cwd=ROOT, capture_output=True, text=True, env=full,
                          timeout=60)


def test_launch_refuses_gpus_that_torch_cannot_see(tmp_path):
    res = _launch(tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: nvidia-smi lists 1 GPU(s)"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "CUDA_VISIBLE_DEVICES=" in res.stderr


def test_launch_with_the_gpus_hidden_on_purpose_goes_on(tmp_path):
    """CUDA_VISIBLE_DEVICES set (here empty): the CPU is meant; launch.sh goes on to its next check."""
    res = _launch(tmp_path, CUDA_VISIBLE_DEVICES="", NPROC="two")
    assert res.returncode == 2 and "NPROC=two" in res.stderr and "nvidia-smi" not in res.stderr, res.stderr


def test_gpu_scripts_run_the_projects_venv(tmp_path):
    """Not the system python3 (here one that fails): `.venv/bin/python` of the repo they live in."""
    bin_dir = tmp_path / "bin"
    _stub(bin_dir / "python3", "exit 97")
    log = tmp_path / "calls"
    for script in ("bench_gpu.sh", "gpu_cached_200ep.sh"):
        repo = tmp_path / script
        (repo / "scripts").mkdir(parents=True)
        shutil.copy(ROOT / "scripts" / script, repo / "scripts" / script)
        _stub(repo / ".venv" / "bin" / "python", f'echo "$@" >> {log}')
        env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
        res = subprocess.run(["bash", str(repo / "scripts" / script), str(tmp_path / "data")], cwd=tmp_path,
                             capture_output=True, text=True, env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"},
                             timeout=60)
        assert res.returncode == 0, (script, res.stderr)
    calls = log.read_text().splitlines()
    assert sum("-m distill bench" in c for c in calls) == 5 and sum("-m distill train" in c for c in calls) == 3


def test_the_deit_end_to_end_script_finds_its_recipe_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("gpu_deit_e2e", ROOT / "scripts" / "gpu_deit_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.RECIPE.is_absolute() and module.RECIPE.is_file()
