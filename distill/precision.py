"""Which precision a run computes in: `train.mixed_precision=auto` resolved from the hardware.

- a CUDA GPU: bf16 where its tensor cores compute it (compute capability 8.0 and up: A100, H100, RTX 30xx
  on); fp16 below (V100 7.0, T4 7.5), where `torch.cuda.is_bf16_supported()` is still true because
  bf16 is emulated, slowly;
- a CPU: bf16 where torch dispatches AVX-512 kernels on a CPU with AVX-512 BF16 or AMX; else fp32
  ("no"): there bf16 is emulated, many times slower than fp32 (measured: docs/launching.md).

Where fp32 runs on a GPU, its matmuls use TF32 (`fp32_matmul_precision`). torch is imported where it
is asked: `distill fit` names precisions (`word`) and never loads it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

BF16_CAPABILITY = (8, 0)  # Ampere: the first tensor cores with bf16
WORDS = {"no": "fp32"}  # Accelerate's mixed_precision values, as a run's header and errors say them


def gpu_precision(capability: Tuple[int, int]) -> str:
    """`auto` on a CUDA GPU of compute capability (major, minor): bf16 where native, else fp16."""
    return "bf16" if tuple(capability) >= BF16_CAPABILITY else "fp16"


def cpu_precision(cpuinfo: str, cpu_capability: str) -> str:
    """`auto` on a CPU: bf16 with AVX-512 BF16 or AMX among `cpuinfo`'s flags and torch dispatching AVX-512
    kernels (`cpu_capability`; ATEN_CPU_CAPABILITY=avx2 or an old build computes bf16 on the emulated path)."""
    dispatched = cpu_capability.startswith("AVX512")
    return "bf16" if dispatched and ("avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo) else "no"


def native_precision(cuda: bool) -> str:
    """`train.mixed_precision=auto` on this machine's GPU (`cuda`) or CPU."""
    import torch

    if cuda:
        return gpu_precision(torch.cuda.get_device_capability())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, so the safe choice
        return "no"
    return cpu_precision(flags, torch.backends.cpu.get_cpu_capability())


def resolve(requested: Optional[str], cuda: bool) -> Optional[str]:
    """The precision a run of `train.mixed_precision=requested` computes in here: `auto` resolved
    (`native_precision`), any other value as given (None: Accelerate's config)."""
    return native_precision(cuda) if requested == "auto" else requested


def word(precision: Optional[str]) -> str:
    """`no` as fp32 (`WORDS`), the others as they are."""
    return WORDS.get(precision, str(precision))


def this_machine(cuda: bool) -> str:
    """This machine's kind as far as `auto` is concerned: the GPU's compute capability or the CPU's."""
    import torch

    if cuda:
        return f"GPU of compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}"
    return f"CPU dispatching {torch.backends.cpu.get_cpu_capability()} kernels"


def fp32_matmul_precision(device_type: str) -> str:
    """torch's float32 matmul precision for a run on `device_type`: "high" (TF32 tensor cores, 10-bit
    mantissa products, fp32 sums) on a GPU, as timm's and DeiT's training scripts run; "highest" elsewhere
    (a CPU has no TF32; bit-exact CPU runs stay untouched)."""
    return "high" if device_type == "cuda" else "highest"


def precision_warning(requested: str, resolved: str, device_type: str) -> Optional[str]:
    """One line for a bf16 run asked for explicitly on a CPU that only emulates bf16, else None."""
    import torch

    if requested == "bf16" and resolved == "bf16" and device_type == "cpu" and native_precision(False) != "bf16":
        return (f"warning: train.mixed_precision=bf16 on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}, "
                "no AVX-512 BF16 or AMX): bf16 is emulated, many times slower than fp32 (docs/launching.md); "
                "set train.mixed_precision=auto")
    return None
