"""Pooling a whole document's final hidden states into one vector, online, one segment at a time.

Shapes: B batch, T segment length, C = d_model.

Every pooling keeps a `PoolState` of constant size per document, so a document of any length costs the
same memory: `mean` a running sum and count; `max` a running maximum; `attention` a softmax over all
tokens with a learned query, kept as (running max score m, sum of exp(score - m), exp-weighted sum of
states), the same rescaling trick as online softmax; `last` the state of the last real token.
`segment_state` with a fixed reference `ref` gives a segment's additive share of the final state, which
the memory-light training step and the per-segment explanation rely on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PoolState:
    """`total` (B, C); `norm` (B,) count or softmax normaliser; `ref` (B,) the attention scores' reference max."""

    total: torch.Tensor
    norm: torch.Tensor
    ref: torch.Tensor

    def select(self, rows: torch.Tensor) -> "PoolState":
        return PoolState(self.total[rows], self.norm[rows], self.ref[rows])

    def detach(self) -> "PoolState":
        return PoolState(self.total.detach(), self.norm.detach(), self.ref.detach())


def segment_state(kind: str, hidden: torch.Tensor, valid: torch.Tensor, *, scores: torch.Tensor | None = None,
                  ref: torch.Tensor | None = None) -> PoolState:
    """One segment's pooling statistics.

    Args:
        hidden: (B, T, C); valid: (B, T) bool, False at padding; scores: (B, T) attention logits;
        ref: (B,) reference max for `attention` (default: this segment's own max).
    """
    hidden = hidden.float()
    w = valid.to(hidden.dtype)  # (B, T)
    count = w.sum(1)  # (B,)
    zeros = torch.zeros_like(count)
    if kind == "mean":
        return PoolState(torch.einsum("bt,btc->bc", w, hidden), count, zeros)
    if kind == "max":
        masked = hidden.masked_fill(~valid[..., None], torch.finfo(hidden.dtype).min)
        return PoolState(masked.amax(1), count, zeros)  # (B, C)
    if kind == "last":
        last = (count.long() - 1).clamp(min=0)  # (B,)
        return PoolState(hidden[torch.arange(hidden.size(0)), last] * (count > 0)[:, None], count, zeros)
    if kind == "attention":
        scores = scores.float().masked_fill(~valid, float("-inf"))  # (B, T)
        if ref is None:
            ref = scores.amax(1).clamp(min=-1e30).detach()  # (B,); no valid token: any finite value
        e = torch.exp(scores - ref[:, None])  # (B, T)
        return PoolState(torch.einsum("bt,btc->bc", e, hidden), e.sum(1), ref)
    raise ValueError(f"unknown pooling {kind!r}")


def combine(kind: str, a: PoolState, b: PoolState) -> PoolState:
    """State of the concatenation of two token ranges. Empty ranges (norm == 0) leave the other unchanged."""
    if kind == "mean":
        return PoolState(a.total + b.total, a.norm + b.norm, a.ref)
    if kind == "max":
        return PoolState(torch.maximum(a.total, b.total), a.norm + b.norm, a.ref)
    if kind == "last":
        has_b = (b.norm > 0)[:, None]
        return PoolState(torch.where(has_b, b.total, a.total), a.norm + b.norm, a.ref)
    ref = torch.maximum(a.ref, b.ref)  # attention: rescale both to the larger reference
    sa, sb = torch.exp(a.ref - ref), torch.exp(b.ref - ref)
    return PoolState(a.total * sa[:, None] + b.total * sb[:, None], a.norm * sa + b.norm * sb, ref)


def finalize(kind: str, state: PoolState) -> torch.Tensor:
    """The pooled vector (B, C)."""
    if kind in ("mean", "attention"):
        return state.total / state.norm.clamp(min=1e-12)[:, None]
    return state.total


def share(kind: str, part: PoolState, final: PoolState, *, is_last: torch.Tensor) -> torch.Tensor:
    """A segment's additive share of the pooled vector, (B, C); the shares of all segments sum to it.

    `max` gives each dimension to the segment that holds its maximum; `last` gives everything to the last
    segment (`is_last`, (B,) bool).
    """
    if kind == "mean":
        return part.total / final.norm.clamp(min=1e-12)[:, None]
    if kind == "attention":
        scale = torch.exp(part.ref - final.ref) / final.norm.clamp(min=1e-12)  # (B,)
        return part.total * scale[:, None]
    if kind == "max":
        return torch.where(part.total == final.total, final.total, torch.zeros_like(final.total))
    return final.total * is_last[:, None].to(final.total.dtype)
