"""Dropout with a cheaper random mask on a CPU.

torch draws one random number per element for `nn.Dropout` (`bernoulli_`): fine-tuning MiniLM on 2 CPU cores
spent 29% of its time there, most of it on the (B, H, T, K) attention probabilities. Here each element takes
16 random bits, four to one 64-bit draw, so a mask costs about a quarter as much. The keep probability is
1 - p rounded to a multiple of 1/65536 (0.1 stays 0.1 within 1e-5). On a GPU torch's own (fused) dropout is used.
The mask comes from torch's default generator, so `torch.manual_seed` and a restored random state replay it.

Where the compiled kernels are built (`fused`: bf16 and float32 on CPUs with AVX512-BF16, float32 on CPUs
with AVX2), those tensors take the kernels' mask instead: a function of a seed drawn from that generator and of each element's place, applied in one
pass forward and made again in the backward, so no mask is kept (with `keep_mask`: 4 passes forward, 2 backward,
a byte per element kept).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> torch.Tensor:
    """Bool mask of `shape`, each element True (kept) with probability 1 - p, independently."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)  # all 64 bits
    return words.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with `keep_mask` on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    op = fused.dropout_op(x.dtype)
    if op is not None:
        return _SeededDropout.apply(x, p, int(torch.empty((), dtype=torch.int64).random_()), op)
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


class _SeededDropout(torch.autograd.Function):
    """x * mask / (1 - p) by the kernel's `dropout(x, p, seed)`; its backward is the same op on the gradient."""

    @staticmethod
    def forward(ctx, x, p, seed, op):
        ctx.p, ctx.seed, ctx.op = p, seed, op
        return op(x, p, seed)

    @staticmethod
    def backward(ctx, grad):
        return ctx.op(grad, ctx.p, ctx.seed), None, None, None


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` (no parameters, so checkpoints are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
