"""The one place that chooses how an attention step is computed: the plain path, or a fast path that equals it.

Routes (each tested against `plain`):
- `kernel`: CPU bf16 inference, the compiled attention kernel (`fused.rel_attn_bf16`): no autograd, no attention
  dropout (also not in a training pass read without gradients, which must draw what the pass after it draws), no
  probabilities wanted, head size a multiple of 16 up to 64, the plain causal mask (not `same_length`) or,
  bidirectional, no mask or right padding only (given as key counts). It never computes a key a query does not see.
- `sdpa`: torch's fused `scaled_dot_product_attention` with the position term as its additive bias: whenever no
  probabilities are wanted, except CPU training with attention dropout (its mask, one `bernoulli_` draw per score,
  cost more than the whole attention).
- `softmax_dropout`: CPU training with attention dropout: one autograd function for softmax, dropout and the
  weighted sum (`softmax_dropout.SoftmaxDropoutValues`, a compiled float32 kernel where built).
- `plain`: the paper's softmax and dropout in torch, and the only route that returns the probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fused


@dataclass(frozen=True)
class Route:
    """name: kernel | sdpa | softmax_dropout | plain. key_len: (B,) keys each document sees when bidirectional
    right padding is passed as counts instead of a mask (kernel, float32 softmax_dropout), else None."""

    name: str
    key_len: torch.Tensor | None = None


def right_padding_lengths(mask: torch.Tensor, klen: int) -> torch.Tensor | None:
    """The key counts (B,) of a bidirectional padding mask (B, 1, 1, K) that hides only keys at the right of
    each document (its last segment's padding) and leaves each at least one; None for any other mask."""
    if mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.size(-1) != klen:
        return None
    hidden = mask[:, 0, 0]  # (B, K), True = padding
    key_len = klen - hidden.sum(-1)
    right = torch.arange(klen, device=mask.device) >= key_len[:, None]
    return key_len if bool(torch.equal(hidden, right)) and bool((key_len > 0).all()) else None


def f32_training_kernel(v: torch.Tensor) -> bool:
    """Whether `softmax_dropout` runs the compiled float32 kernel for values like `v`."""
    return v.device.type == "cpu" and v.dtype == torch.float32 and fused.softmax_dropout_f32() is not None


def _kernel_key_len(q, k, v, r, *, mask, d_head: int, bidirectional: bool, same_length: bool, klen: int):
    """(whether the bf16 kernel applies, the bidirectional key counts)."""
    if (torch.is_grad_enabled() or q.device.type != "cpu" or d_head % 16 or d_head > 64
            or not q.dtype == k.dtype == v.dtype == r.dtype == torch.bfloat16 or fused.rel_attn_bf16() is None):
        return False, None
    if not bidirectional:
        return mask is not None and not same_length, None
    if mask is None:
        return True, None
    key_len = right_padding_lengths(mask, klen)
    return key_len is not None, key_len


def attention_route(q, k, v, r, *, mask, need_probs: bool, dropout: float, d_head: int, bidirectional: bool,
                    same_length: bool, klen: int) -> Route:
    """The route of one attention step; `dropout` is the attention dropout in force (0 in eval mode).

    q (B, H, T, D); k, v (B, H, K', D) the rows projected in this call; r (H, K, D); mask as in
    `RelMultiHeadAttn.forward`.
    """
    if not need_probs and dropout == 0.0:  # the kernel has no dropout: never in a training pass that drops
        use, key_len = _kernel_key_len(q, k, v, r, mask=mask, d_head=d_head, bidirectional=bidirectional,
                                       same_length=same_length, klen=klen)
        if use:
            return Route("kernel", key_len)
    if need_probs or dropout >= 1.0 and q.device.type == "cpu":
        return Route("plain")
    if dropout == 0.0 or q.device.type != "cpu":
        return Route("sdpa")
    key_len = None
    if bidirectional and mask is not None and f32_training_kernel(v):
        key_len = right_padding_lengths(mask, klen)
    return Route("softmax_dropout", key_len)


def rel_attn_kernel(q, u, v_bias, scale: float, kept, k, v, r, *, causal: bool, key_len) -> torch.Tensor:
    """The `kernel` route: (B, T, H*D). `kept`: the memory rows' keys and values, read beside this call's rows
    without joining them into a copy, or None."""
    vec = fused.rel_attn_bf16()(q, u, v_bias, scale, *(kept or (None, None)), k, v, r, causal, key_len)  # (B, T, H, D)
    return vec.view(q.size(0), q.size(2), -1)
