"""Compiled kernels for the CPU fast path (txl_core/csrc), optional: everything has a pure-torch fallback.

`build()` compiles them with torch's C++ extension tools (a C++ compiler is needed; `bash run.sh setup` runs
it, and so does `python -m txl_core.build_kernels`); `rel_attn_bf16()` (inference attention) and
`softmax_dropout_bf16()` (training's attention softmax and dropout) return the loaded operators, or None when they
were not built or this CPU lacks AVX512-BF16. A build never happens implicitly at run time: it takes a minute.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "rel_attn.cpp", CSRC / "softmax_dropout.cpp"]
HEADERS = [CSRC / "vec_math.h"]
FLAGS = ["-O3", "-march=x86-64-v3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
         "-fopenmp", "-std=c++17"]
_LOADED: dict = {}


def cache_dir() -> Path:
    """Where builds go: $TXL_KERNEL_DIR, else ~/.cache/txl/kernels; one folder per source, flags and torch."""
    root = Path(os.environ.get("TXL_KERNEL_DIR") or Path.home() / ".cache" / "txl" / "kernels")
    sources = b"".join(f.read_bytes() for f in SOURCES + HEADERS)
    key = hashlib.sha256(sources + " ".join(FLAGS).encode() + torch.__version__.encode()
                         + sys.version.encode()).hexdigest()[:12]
    return root / f"txl_fused_{key}"


def cpu_supported() -> bool:
    """x86-64 Linux with AVX512-BF16 (the kernel's vdpbf16ps)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags and " avx512bw" in flags


def build(verbose: bool = False) -> Path:
    """Compile the kernels into `cache_dir()` (once per source and torch) and return the shared library."""
    from torch.utils import cpp_extension

    out = cache_dir()
    lib = out / f"{out.name}.so"
    if lib.is_file():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    bindir = str(Path(sys.executable).parent)  # the `ninja` the project installs, when this venv is not activated
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    cpp_extension.load(name=out.name, sources=[str(f) for f in SOURCES], extra_cflags=FLAGS,
                       extra_ldflags=["-fopenmp"], build_directory=str(out), is_python_module=False, verbose=verbose)
    _LOADED.clear()  # the next `_ops()` looks again
    return lib


def _ops():
    """torch.ops.txl_fused when the kernels are built and usable here, else None (loaded once per process)."""
    if "ops" not in _LOADED:
        _LOADED["ops"] = None
        lib = cache_dir() / f"{cache_dir().name}.so"
        if cpu_supported() and lib.is_file() and os.environ.get("TXL_FUSED", "1") != "0":
            try:
                torch.ops.load_library(str(lib))
                _LOADED["ops"] = torch.ops.txl_fused
            except (OSError, RuntimeError):
                pass
    return _LOADED["ops"]


def rel_attn_bf16():
    """torch.ops.txl_fused.rel_attn_bf16 when built and usable here, else None."""
    ops = _ops()
    return None if ops is None else ops.rel_attn_bf16


def softmax_dropout_bf16():
    """The three operators of csrc/softmax_dropout.cpp as (forward, dropout, backward), or None:
    `forward(score, p, seed) -> (probs, dropped)`, `dropout(probs, p, seed) -> dropped`,
    `backward(probs, grad_dropped, p, seed) -> grad_score`, all bf16 on a CPU (`dropout` also float32)."""
    ops = _ops()
    return None if ops is None else (ops.softmax_dropout_bf16, ops.dropout_rows, ops.softmax_dropout_backward_bf16)

