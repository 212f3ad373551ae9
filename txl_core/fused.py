"""Compiled kernels for the CPU fast path (txl_core/csrc), optional: everything has a pure-torch fallback.

`build()` compiles them with torch's C++ extension tools (a C++ compiler is needed; `bash run.sh setup` runs
it, and so does `python -m txl_core.build_kernels`); `rel_attn_bf16()` returns the loaded operator, or None when it
was not built or this CPU lacks AVX512-BF16. A build never happens implicitly at run time: it takes a minute.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "rel_attn.cpp"
FLAGS = ["-O3", "-march=x86-64-v3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
         "-fopenmp", "-std=c++17"]
_LOADED: dict = {}


def cache_dir() -> Path:
    """Where builds go: $TXL_KERNEL_DIR, else ~/.cache/txl/kernels; one folder per source, flags and torch."""
    root = Path(os.environ.get("TXL_KERNEL_DIR") or Path.home() / ".cache" / "txl" / "kernels")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode()
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
    cpp_extension.load(name=out.name, sources=[str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                       build_directory=str(out), is_python_module=False, verbose=verbose)
    _LOADED.clear()  # the next `rel_attn_bf16()` looks again
    return lib


def rel_attn_bf16():
    """torch.ops.txl_fused.rel_attn_bf16 when built and usable here, else None (loaded once per process)."""
    if "op" not in _LOADED:
        _LOADED["op"] = None
        lib = cache_dir() / f"{cache_dir().name}.so"
        if cpu_supported() and lib.is_file() and os.environ.get("TXL_FUSED", "1") != "0":
            try:
                torch.ops.load_library(str(lib))
                _LOADED["op"] = torch.ops.txl_fused.rel_attn_bf16
            except (OSError, RuntimeError):
                pass
    return _LOADED["op"]


def packing_supported() -> bool:
    """Whether this torch and CPU run oneDNN's bf16 linear on a prepacked weight (`PackedLinear`)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(torch.nn.Module):
    """An `nn.Linear` for bf16 CPU inference whose weight is reordered once into oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`, multiplied by `torch.ops.mkldnn._linear_pointwise`, the pair
    torch's own compiler uses for frozen CPU models): the plain bf16 `F.linear` reorders the weight on every
    call. Same results (tested equal), 1.25-1.35x faster at this project's sizes (benchmarks/RESULTS.md).
    Inference only: it has no gradient, and no `weight` to cast or move (`dense_weight()` gives it back)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_hint: int = 256, relu: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rows_hint = weight.size(1), weight.size(0), rows_hint
        self.relu = relu  # the ReLU that followed it, applied inside oneDNN's product
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(),
                                                              rows_hint)  # an opaque tensor, not a buffer
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16), persistent=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, relu: bool = False) -> "PackedLinear":
        return cls(linear.weight, linear.bias, relu=relu)

    def dense_weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN reads the input as dense rows: a strided view must be made contiguous first (tested)
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).contiguous(), self.packed, self.bias,
                                                  "relu" if self.relu else "none", [], "")

    def __deepcopy__(self, memo):  # an opaque tensor has no storage to copy: pack a copy of the weight again
        return PackedLinear(self.dense_weight(), None if self.bias is None else self.bias.clone(), self.rows_hint,
                            self.relu)

    def _apply(self, fn, recurse=True):
        raise RuntimeError("a packed linear layer is for bf16 CPU inference only: load the model again to move "
                           "or cast it")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", relu=True" if self.relu else ""))


def pack_linears(module: torch.nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear` (in place), one followed by an `nn.ReLU` in
    an `nn.Sequential` (the feed-forward block) with the ReLU fused in (the ReLU becomes an `nn.Identity`);
    returns how many."""
    count = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if type(child) is torch.nn.Linear:
                relu = (isinstance(parent, torch.nn.Sequential) and i + 1 < len(children)
                        and type(children[i + 1][1]) is torch.nn.ReLU)
                setattr(parent, name, PackedLinear.from_linear(child, relu=relu))
                if relu:
                    setattr(parent, children[i + 1][0], torch.nn.Identity())
                count += 1
    return count
