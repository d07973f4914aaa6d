"""Precision follows the hardware: `train.mixed_precision=auto` (the default) and the warning for an explicit
bf16 on a CPU that only emulates it."""
import pytest
import torch

from distill import precision as build
from distill.precision import fp32_matmul_precision, gpu_precision, native_precision, precision_warning


@pytest.mark.parametrize("flags, capability, expected", [
    ("fpu avx2 avx512f avx512_bf16", "AVX512", "bf16"), ("fpu amx_bf16 avx2", "AVX512", "bf16"),
    ("fpu sse4_2 avx2 fma", "AVX2", "no"),
    ("fpu avx2 avx512f avx512_bf16", "AVX2", "no"),  # ATEN_CPU_CAPABILITY=avx2: torch emulates bf16 anyway
])
def test_auto_is_bf16_only_where_the_cpu_computes_it(flags, capability, expected, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_path = build.Path
    monkeypatch.setattr(build, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    assert native_precision(False) == expected


def test_an_explicit_bf16_on_an_emulating_cpu_warns_in_one_line(monkeypatch):
    monkeypatch.setattr(build, "native_precision", lambda cuda: "no")
    line = precision_warning("bf16", "bf16", "cpu")
    assert line.startswith("warning: train.mixed_precision=bf16") and "\n" not in line and "emulated" in line
    assert "train.mixed_precision=auto" in line
    assert precision_warning("auto", "no", "cpu") is None and precision_warning("bf16", "bf16", "cuda") is None
    monkeypatch.setattr(build, "native_precision", lambda cuda: "bf16")
    assert precision_warning("bf16", "bf16", "cpu") is None


def test_the_quickstart_and_the_cpu_studies_take_precision_from_the_hardware():
    from conftest import ROOT
    for path in ["scripts/quickstart.sh", "recipes/studies/fashion_mnist_cpu.yaml", "recipes/studies/scaling_cpu.yaml"]:
        text = (ROOT / path).read_text()
        assert "mixed_precision=bf16" not in text and "mixed_precision=auto" in text, path


def test_a_teacher_with_random_weights_is_named():
    from conftest import ROOT
    from distill.recipe import load_config
    from distill.train.build import run_warnings
    hard = str(ROOT / "recipes/fashion_mnist/hard_tiny.yaml")
    lines = run_warnings(load_config(hard, ["teacher.checkpoint=null"]), "no", "cpu")
    assert len(lines) == 1 and lines[0].startswith("warning: the teacher resnet18 has random weights")
    assert run_warnings(load_config(hard), "no", "cpu") == []  # the recipe's checkpoint
    assert run_warnings(load_config(str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")), "no", "cpu") == []


def test_the_run_header_calls_full_precision_fp32(tmp_path):
    """Accelerate calls fp32 `no`; the header a user reads says `fp32`."""
    from conftest import PLAIN, needs_fmnist, run_main  # noqa: F401
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", "data.train_subset=64", "data.test_subset=64",
                   "data.batch_size=32", "train.epochs=1", "train.mixed_precision=no")
    assert res.returncode == 0, res.stderr[-2000:]
    header = next(line for line in res.stdout.splitlines() if "params," in line)
    assert "precision fp32," in header, header


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "bf16"), ((8, 9), "bf16"), ((8, 6), "bf16"), ((8, 0), "bf16"),  # H100, L4, RTX 30xx, A100
    ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp16"),  # T4, V100, P40: bf16 only emulated there
])
def test_auto_on_a_gpu_is_bf16_from_compute_capability_8(capability, expected):
    assert gpu_precision(capability) == expected


def test_auto_on_a_gpu_reads_the_capability_not_is_bf16_supported(monkeypatch):
    """A T4 says `is_bf16_supported()` (emulated bf16): `auto` must still take fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    assert native_precision(True) == "fp16"


def test_auto_is_the_default_and_fp32_on_a_gpu_uses_tf32():
    from distill.recipe import load_config
    assert load_config(None, []).train.mixed_precision == "auto"
    assert fp32_matmul_precision("cuda") == "high" and fp32_matmul_precision("cpu") == "highest"
