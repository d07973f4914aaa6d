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


def test_the_precision_cell_is_v5s_cell_in_fp32_and_states_its_difference():
    """docs/precision_cpu: each fp32 run's config is its v5 bf16 run's but for the precision; the README states
    each pair and the paired differences with their intervals, recomputed here from the committed summaries."""
    import json

    from conftest import ROOT
    from distill.report.baselines import differences, saved_config
    from distill.report.stats import paired_diff_ci

    text = (ROOT / "docs/precision_cpu/README.md").read_text()
    pairs = []
    for s in range(3):
        bf16, fp32 = ROOT / f"docs/scaling_cpu_v5/runs/plain_w704d18_e1_s{s}", \
            ROOT / f"docs/precision_cpu/runs/plain_w704d18_e1_s{s}_fp32"
        assert differences(saved_config(fp32), saved_config(bf16)) == {"train.mixed_precision": ("no", "auto")}
        a, b = (json.loads((d / "summary.json").read_text()) for d in (bf16, fp32))
        assert (a["mixed_precision"], b["mixed_precision"]) == ("bf16", "no")
        assert f"| {s} | {a['final_top1']:.2f} | {b['final_top1']:.2f} | {a['test_loss']:.4f} | {b['test_loss']:.4f} |" in text
        pairs.append((a, b))
    for key, spec, words in [("final_top1", "+.2f", "top-1"), ("test_loss", "+.4f", "test loss")]:
        d, half = paired_diff_ci([b[key] for _, b in pairs], [a[key] for a, _ in pairs])
        assert f"{words} {d:{spec}} [{d - half:{spec}}, {d + half:{spec}}]" in text
