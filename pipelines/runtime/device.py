"""Which device and precision a command runs on: the machine decides `auto`."""
from __future__ import annotations

from pathlib import Path

import torch

from pipelines.runtime.cpu import cpu_has_bf16_units

PRECISIONS = ("auto", "float32", "bf16", "int8")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """`auto`: bf16 on a GPU; on a CPU with bf16 matrix units bf16 for inference (measured to cost no test
    accuracy, benchmarks/RESULTS.md) and float32 for training (not yet measured there); else float32."""
    if precision != "auto":
        return precision
    if device.type == "cuda" or (not training and cpu_has_native_bf16()):
        return "bf16"
    return "float32"  # without bf16 units torch's bf16 matmul is a slow fallback


def cpu_has_native_bf16() -> bool:
    """Whether bf16 matmuls run on bf16 units (AVX512-BF16, AMX): torch's test for its oneDNN bf16 path, and,
    where /proc/cpuinfo tells, the units themselves (torch's test passes on any AVX-512 CPU, where bf16 is
    emulated).

    Without them torch falls back to a generic bf16 GEMM: the classifier ran 6-8x slower than float32 (20x with
    2 busy threads), and bf16 autocast ran the encoder at 0.37x the reference's speed on an AVX2-only CPU.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return cpu_has_bf16_units() if Path("/proc/cpuinfo").is_file() else True
