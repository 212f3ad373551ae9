"""Training on documents of any length in constant memory: two passes instead of one long graph.

The loss depends on the tokens only through the pooled state, and the memory between segments is detached
(the paper's stop-gradient), so d loss / d params = sum over segments of <d loss / d state, d state_s / d
params>, where state_s is segment s's additive share of the pooled state (see `pooling`). Pass 1 reads the
document without gradients and yields the final state; the loss is back-propagated to that state only;
pass 2 re-reads each segment with gradients and back-propagates its share at once, so only one segment's
activations are alive at any time. Dropout masks are replayed by restoring the random state before pass 2.
The gradients equal those of back-propagating through every segment at once (tested). Batches no longer
than `direct_segments` segments take that plain route: a second forward pass would cost a third more time
for activations that fit anyway.
"""
from __future__ import annotations

from typing import Callable

import torch

from .classifier import TXLDocumentClassifier
from .pooling import PoolState


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def backward_document(model: TXLDocumentClassifier, input_ids: torch.Tensor, lengths: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                      direct_segments: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradients of `loss_fn(logits)` into the parameters, one segment at a time.

    Args:
        input_ids: (B, N) right-padded documents; lengths: (B,); loss_fn: logits (B, L) -> scalar;
        direct_segments: up to this many segments (N), back-propagate through them at once instead.
    Returns:
        (loss, logits), both detached.
    """
    if input_ids.size(1) <= direct_segments * model.config.segment_len:
        logits = model(input_ids, lengths).logits
        loss = loss_fn(logits)
        loss.backward()
        return loss.detach(), logits.detach()
    kind, device = model.config.pooling, input_ids.device
    before = _rng_state(device)
    with torch.no_grad():
        final, _ = model.read(input_ids, lengths)
    total = final.total.detach().requires_grad_()
    norm = final.norm.detach().requires_grad_(kind == "attention")  # only attention's normaliser has a gradient
    logits = model.classify(PoolState(total, norm, final.ref))
    loss = loss_fn(logits)
    loss.backward()
    after = _rng_state(device)
    _set_rng_state(before, device)
    for seg in model.iter_segments(input_ids, lengths):
        part = model.segment_state(seg, ref=final.ref[seg.rows])
        surrogate = _surrogate(kind, part, final.select(seg.rows), seg.is_last,
                               total.grad[seg.rows], None if norm.grad is None else norm.grad[seg.rows])
        if surrogate.requires_grad:
            surrogate.backward()
    _set_rng_state(after, device)
    return loss.detach(), logits.detach()


def _surrogate(kind, part: PoolState, final: PoolState, is_last, g_total, g_norm) -> torch.Tensor:
    """A scalar whose gradient w.r.t. the parameters is this segment's share of d loss / d params."""
    if kind == "max":  # the gradient reaches the dimensions whose maximum lies in this segment
        return (g_total * part.total * (part.total == final.total)).sum()
    if kind == "last":
        return (g_total * part.total * is_last[:, None]).sum()
    value = (g_total * part.total).sum()
    return value + (g_norm * part.norm).sum() if g_norm is not None else value
