"""The training attention's softmax, dropout and weighted sum as one autograd function (CPU, attention dropout).

Shapes: B batch, H heads, T queries, K keys, D head size.
"""
from __future__ import annotations

import torch

from . import fused
from .dropout import keep_mask


class SoftmaxDropoutValues(torch.autograd.Function):
    """dropout(softmax(score)) @ v, for CPU training with attention dropout, keeping for the backward only the
    probabilities in v's precision and the keep mask (3 bytes per score in bf16, where the unfused ops kept the
    float32 softmax output, the mask and the dropped probabilities: 7). The softmax is computed in float32 and
    its gradient from the kept probabilities; with float32 values that is the unfused computation exactly. The
    mask is drawn where `Dropout` draws it, so a restored random state replays it.

    On a CPU where the compiled kernels are built (`fused.softmax_dropout_bf16` for bf16 values, `_f32` for
    float32 ones) the mask is theirs, as `Dropout`'s is there: a function of a seed drawn from torch's
    generator, made again in the backward, so only the probabilities are kept (2 bytes per score in bf16); the
    softmax, the dropout and the softmax gradient are one kernel pass each way (bf16: 4.5x faster than torch's
    ops at (16, 12, 256, 512)).
    """

    @staticmethod
    def forward(ctx, score, v, p, key_len=None):
        kernels = None
        if score.device.type == "cpu" and 0.0 < p < 1.0:
            kernels = fused.softmax_dropout_bf16() if v.dtype == torch.bfloat16 else \
                fused.softmax_dropout_f32() if v.dtype == torch.float32 else None
        ctx.p, ctx.score_dtype, ctx.kernels = p, score.dtype, kernels
        with torch.autocast(score.device.type, enabled=False):
            if key_len is not None and (kernels is None or v.dtype != torch.float32):  # only the f32 kernel takes it
                pad = torch.arange(score.size(-1), device=score.device) >= key_len[:, None, None, None]
                score = score.masked_fill(pad, torch.finfo(score.dtype).min)
                key_len = None
            if kernels is not None:  # one pass: the softmax in float32, probabilities and dropped copy in v's dtype
                ctx.seed = int(torch.empty((), dtype=torch.int64).random_())  # as `Dropout` draws it
                if v.dtype == torch.bfloat16:
                    probs, dropped = kernels[0](score, p, ctx.seed)
                else:
                    probs, dropped = kernels[0](score.float(), p, ctx.seed, key_len)
                ctx.save_for_backward(probs, None, v)
                return torch.matmul(dropped, v)  # (B, H, T, D)
            probs = torch.softmax(score, dim=-1, dtype=torch.float32).to(v.dtype)  # (B, H, T, K)
            keep = keep_mask(probs.shape, p, probs.device) if p > 0.0 else None
            dropped = probs if keep is None else torch.where(keep, probs * (1.0 / (1.0 - p)), 0.0)
            ctx.save_for_backward(probs, keep, v)
            return torch.matmul(dropped, v)  # (B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        probs, keep, v = ctx.saved_tensors
        p, kernels = ctx.p, ctx.kernels

        def drop(t):  # the forward's dropout, on the probabilities again and on their gradient
            if kernels is not None:
                return kernels[1](t, p, ctx.seed)
            return t if keep is None else torch.where(keep, t * (1.0 / (1.0 - p)), 0.0)

        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.to(v.dtype)
            grad_v = torch.matmul(drop(probs).transpose(-1, -2), grad)  # (B, H, K, D)
            grad_dropped = torch.matmul(grad, v.transpose(-1, -2))  # (B, H, T, K)
            if kernels is not None:
                return kernels[2](probs, grad_dropped, p, ctx.seed).to(ctx.score_dtype), grad_v, None, None
            y = probs.float()
            yg = drop(grad_dropped).float().mul_(y)  # the softmax gradient y (g - sum(y g)), in two buffers
            grad_score = yg.addcmul_(y, yg.sum(-1, keepdim=True), value=-1)
        return grad_score.to(ctx.score_dtype), grad_v, None, None
