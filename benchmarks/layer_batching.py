"""Would a wavefront over (layer, segment) diagonals speed up batch 1? Times the bench model's per-layer products
for one 256-token segment, six layers one after the other against one batched product over the six.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/layer_batching.py

Layer l of segment s and layer l + 1 of segment s - 1 are independent, so a single document could run up to
n_layer layers' products at once (bmm over stacked weights). Prints milliseconds per six layers: the linear
layers (qkv, feed-forward) and the fused attention, sequential and batched, in float32 and bf16.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LAYERS, T, C, A, FF, HEADS, D = 6, 256, 256, 256, 1024, 8, 32


def ms(fn, n: int = 50) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(LAYERS, T, C, dtype=dtype)
        qkv, up, down = (torch.randn(LAYERS, o, i, dtype=dtype) for o, i in ((3 * A, C), (FF, C), (C, FF)))
        q, k = torch.randn(LAYERS, HEADS, T, D, dtype=dtype), torch.randn(LAYERS, HEADS, 2 * T, D, dtype=dtype)
        bias = torch.randn(LAYERS, HEADS, T, 2 * T, dtype=dtype)
        with torch.inference_mode():
            def linears_one_by_one():
                for g in range(LAYERS):
                    F.linear(x[g], qkv[g])
                    F.linear(F.relu(F.linear(x[g], up[g])), down[g])

            def linears_batched():
                torch.bmm(x, qkv.transpose(1, 2))
                torch.bmm(F.relu(torch.bmm(x, up.transpose(1, 2))), down.transpose(1, 2))

            def attention_one_by_one():
                for g in range(LAYERS):
                    F.scaled_dot_product_attention(q[g:g + 1], k[g:g + 1], k[g:g + 1], attn_mask=bias[g:g + 1])

            def attention_batched():
                F.scaled_dot_product_attention(q, k, k, attn_mask=bias)

            a, b, c, d = (ms(f) for f in (linears_one_by_one, linears_batched, attention_one_by_one,
                                          attention_batched))
        print(f"{str(dtype).split('.')[-1]}: linears {a:.2f} ms one by one, {b:.2f} ms batched ({a / b:.2f}x); "
              f"attention {c:.2f} ms, {d:.2f} ms ({c / d:.2f}x)")


if __name__ == "__main__":
    main()
