"""Compiled kernels for the CPU fast path (txl_core/fast/csrc), optional: everything has a pure-torch fallback.

Two builds, one per kind of x86-64 CPU (`variant()`): on CPUs with AVX512-BF16, the bf16 attention kernel of
inference and the bf16 and float32 softmax-and-dropout kernels of training; on CPUs with AVX2 and FMA but no
bf16 units (where training runs in float32), the float32 ones alone. `build()` compiles this CPU's with torch's
C++ extension tools (a C++ compiler is needed; `bash run.sh setup` runs it, and so does `python -m
txl_core.fast.build_kernels`); `rel_attn_bf16()` (inference attention), `softmax_dropout_bf16()` and
`softmax_dropout_f32()` (training's attention softmax and dropout) return the loaded operators, or None when
they were not built or this CPU lacks what they need. A build never happens implicitly at run time: it takes a
minute.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
HEADERS = [CSRC / "vec_math.h"]
_AVX2 = ["-O3", "-march=x86-64-v3", "-fopenmp", "-std=c++17"]
VARIANTS = {  # name: (sources, compiler flags)
    "avx512_bf16": ([CSRC / "rel_attn.cpp", CSRC / "softmax_dropout.cpp", CSRC / "softmax_dropout_f32.cpp"],
                    _AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16"]),
    "avx2": ([CSRC / "softmax_dropout_f32.cpp"], _AVX2),
}
_LOADED: dict = {}


def _flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def variant() -> str | None:
    """The build this CPU runs: "avx512_bf16" (x86-64 Linux with AVX512-BF16, the bf16 kernels' vdpbf16ps),
    "avx2" (AVX2 and FMA), or None (another CPU: the pure-torch path)."""
    if "v" not in _LOADED:
        flags = _flags()
        _LOADED["v"] = ("avx512_bf16" if {"avx512_bf16", "avx512bw", "avx512f", "avx2", "fma"} <= flags
                        else "avx2" if {"avx2", "fma", "bmi2"} <= flags else None)
    return _LOADED["v"]


def cpu_supported() -> bool:
    """x86-64 Linux with AVX512-BF16 (the bf16 kernels' vdpbf16ps)."""
    return variant() == "avx512_bf16"


def cache_dir() -> Path:
    """Where this CPU's build goes: $TXL_KERNEL_DIR, else ~/.cache/txl/kernels; one folder per variant, source,
    flags and torch."""
    root = Path(os.environ.get("TXL_KERNEL_DIR") or Path.home() / ".cache" / "txl" / "kernels")
    name = variant() or "none"
    sources, flags = VARIANTS.get(name, ([], []))
    code = b"".join(f.read_bytes() for f in sources + HEADERS)
    key = hashlib.sha256(code + " ".join(flags).encode() + torch.__version__.encode()
                         + sys.version.encode()).hexdigest()[:12]
    return root / f"txl_fused_{name}_{key}"


def build(verbose: bool = False) -> Path:
    """Compile this CPU's kernels into `cache_dir()` (once per source and torch) and return the shared library."""
    from torch.utils import cpp_extension

    if variant() is None:
        raise RuntimeError("this CPU has neither AVX512-BF16 nor AVX2 with FMA")
    sources, flags = VARIANTS[variant()]
    out = cache_dir()
    lib = out / f"{out.name}.so"
    if lib.is_file():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    bindir = str(Path(sys.executable).parent)  # the `ninja` the project installs, when this venv is not activated
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    cpp_extension.load(name=out.name, sources=[str(f) for f in sources], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], build_directory=str(out), is_python_module=False, verbose=verbose)
    _LOADED.pop("ops", None)  # the next `_ops()` looks again
    return lib


def _ops():
    """torch.ops.txl_fused when this CPU's kernels are built and usable here, else None (loaded once per
    process)."""
    if "ops" not in _LOADED:
        _LOADED["ops"] = None
        lib = cache_dir() / f"{cache_dir().name}.so"
        if variant() is not None and lib.is_file() and os.environ.get("TXL_FUSED", "1") != "0":
            try:
                torch.ops.load_library(str(lib))
                _LOADED["ops"] = torch.ops.txl_fused
            except (OSError, RuntimeError):
                pass
    return _LOADED["ops"]


def rel_attn_bf16():
    """torch.ops.txl_fused.rel_attn_bf16 when built and usable here, else None."""
    ops = _ops()
    return None if ops is None or not cpu_supported() else ops.rel_attn_bf16


def softmax_dropout_bf16():
    """The three operators of csrc/softmax_dropout.cpp as (forward, dropout, backward), or None:
    `forward(score, p, seed) -> (probs, dropped)`, `dropout(probs, p, seed) -> dropped`,
    `backward(probs, grad_dropped, p, seed) -> grad_score`, all bf16 on a CPU (`dropout` also float32)."""
    ops = _ops()
    if ops is None or not cpu_supported():
        return None
    return ops.softmax_dropout_bf16, ops.dropout_rows, ops.softmax_dropout_backward_bf16


def softmax_dropout_f32():
    """The three operators of csrc/softmax_dropout_f32.cpp as (forward, dropout, backward), or None: the same
    signatures as `softmax_dropout_bf16()`'s, float32 in and out, the same mask for a seed; built for both
    variants."""
    ops = _ops()
    return None if ops is None else (ops.softmax_dropout_f32, ops.dropout_rows_f32, ops.softmax_dropout_backward_f32)


def dropout_op(dtype: torch.dtype):
    """`dropout(x, p, seed) -> x * mask / (1 - p)` of the kernels for tensors of `dtype`, or None."""
    if dtype == torch.bfloat16:
        kernels = softmax_dropout_bf16()
    elif dtype == torch.float32:
        kernels = softmax_dropout_f32()
    else:
        return None
    return None if kernels is None else kernels[1]
