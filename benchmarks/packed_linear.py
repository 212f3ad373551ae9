"""The bench encoder's linear layers in bf16, as torch's `F.linear` and as `txl_core.fast.packed_linear.PackedLinear`
(the weight reordered once for oneDNN), in microseconds per product (3 timings of 50 calls each) and GFLOP/s.

    python -m benchmarks.packed_linear
"""
from __future__ import annotations

import time

import torch

from txl_core.fast import packed_linear

SHAPES = [(256, 256, 768), (256, 256, 1024), (256, 1024, 256), (2048, 256, 1024)]  # rows, in, out


def timed(fn, n: int = 50) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    if not packed_linear.packing_supported():
        print("oneDNN runs no bf16 linear on this CPU: nothing to compare")
        return 0
    torch.set_grad_enabled(False)
    for rows, d_in, d_out in SHAPES:
        linear = torch.nn.Linear(d_in, d_out).bfloat16()
        packed = packed_linear.PackedLinear.from_linear(linear)
        x = torch.randn(rows, d_in).bfloat16()
        assert torch.equal(packed(x), linear(x))
        flop = 2 * rows * d_in * d_out
        for name, fn in (("F.linear", lambda: linear(x)), ("PackedLinear", lambda: packed(x))):
            times = [timed(fn) for _ in range(3)]
            print(f"{rows:5} x {d_in:4} -> {d_out:4}  {name:12} {' '.join(f'{t:6.0f}' for t in times)} us  "
                  f"{flop / min(times) / 1e3:.0f} GFLOP/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
