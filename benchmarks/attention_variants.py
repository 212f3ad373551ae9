"""One layer's attention step of the bench's encoder (8 heads of 32, T = M = 256), three ways, in milliseconds:
the product's (the causal mask added in place to the `bd` bias, then the fused `scaled_dot_product_attention`),
the unfused one (`baddbmm` + softmax in the input's precision + `bmm`), and the keys split into the memory
(no mask) and the segment (the fused kernel's own causal mode, which skips masked blocks), merged by their
log-sum-exp. Each timing is the mean of 20 calls; three timings per cell; the largest difference from the
product's output is printed too.

    python benchmarks/attention_variants.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

H, D, T, M = 8, 32, 256, 256
K = T + M


def timed(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def variants(batch: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, H, n, D, generator=g).to(dtype) for n in (T, K, K))
    bd0 = torch.randn(batch, H, T, K, generator=g).to(dtype)
    mask = torch.triu(torch.ones(T, K, dtype=torch.bool), diagonal=1 + M)
    bias = torch.zeros(T, T, dtype=dtype).masked_fill_(mask[:, M:], torch.finfo(dtype).min)
    scale = D ** -0.5
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def fused():
        bd = bd0.clone()
        bd[..., M:] += bias
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bd, scale=scale)

    def unfused():
        bd = bd0.clone()
        bd[..., M:] += bias
        score = torch.baddbmm(bd.view(-1, T, K), (q * scale).view(-1, T, D), k.view(-1, K, D).transpose(1, 2))
        return torch.bmm(torch.softmax(score, -1), v.view(-1, K, D)).view(batch, H, T, D)

    def split():
        bd = bd0.clone()
        o1, l1 = flash(q, k[:, :, :M], v[:, :, :M], attn_mask=bd[..., :M], scale=scale)
        o2, l2 = flash(q, k[:, :, M:], v[:, :, M:], is_causal=True, attn_mask=bd[..., M:], scale=scale)
        w = torch.sigmoid(l1 - l2).unsqueeze(-1)  # exp(l1) / (exp(l1) + exp(l2))
        return (o2 + (o1 - o2) * w).to(dtype)

    return {"fused (the product)": fused, "unfused": unfused, "split + merge": split}


def main() -> int:
    torch.set_grad_enabled(False)
    for batch in (1, 8):
        for dtype in (torch.bfloat16, torch.float32):
            cells = variants(batch, dtype)
            ref = cells["fused (the product)"]().float()
            for name, fn in cells.items():
                diff = (fn().float() - ref).abs().max().item()
                times = " ".join(f"{timed(fn):.2f}" for _ in range(3))
                print(f"batch {batch} {str(dtype).split('.')[-1]:8} {name:20} {times} ms   max diff {diff:.2g}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
