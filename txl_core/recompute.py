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

from dataclasses import dataclass
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
                      loss_fn: Callable[[torch.Tensor], torch.Tensor], *, direct_segments: int = 2,
                      window: int | None = None, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradients of `loss_fn(logits)` into the parameters, one segment at a time.

    Args:
        input_ids: (B, N) right-padded documents; lengths: (B,); loss_fn: logits (B, L) -> scalar;
        direct_segments: up to this many segments (N), back-propagate through them at once instead;
        window, first: back-propagate only the shares of segments first ... first + window - 1 (window None:
            every segment, the exact gradient). The loss and its gradient at the pooled state still come from the
            whole documents; pass 2 restarts from the memory and random state pass 1 had at segment `first`, so
            the window's shares are exactly those of the exact gradient.
    Returns:
        (loss, logits), both detached.
    """
    n_segments = -(-input_ids.size(1) // model.config.segment_len)
    whole = window is None or (first == 0 and window >= n_segments)
    if whole and input_ids.size(1) <= direct_segments * model.config.segment_len:
        logits = model(input_ids, lengths).logits
        loss = loss_fn(logits)
        loss.backward()
        return loss.detach(), logits.detach()
    kind, device = model.config.pooling, input_ids.device
    first = 0 if whole else first
    before = _rng_state(device)
    with torch.no_grad():
        final, resume = _read(model, input_ids, lengths, first)
    total = final.total.detach().requires_grad_()
    norm = final.norm.detach().requires_grad_(kind == "attention")  # only attention's normaliser has a gradient
    logits = model.classify(PoolState(total, norm, final.ref))
    loss = loss_fn(logits)
    loss.backward()
    after = _rng_state(device)
    if first > 0 and resume is None:  # these documents end before the window: no share of theirs is in it
        return loss.detach(), logits.detach()
    _set_rng_state(resume.rng if resume is not None else before, device)
    count = None if whole else window
    segments = model.iter_segments(input_ids, lengths, count=count) if resume is None else model.iter_segments(
        input_ids, lengths, first=first, rows=resume.rows, mems=resume.mems, count=count)
    for seg in segments:
        part = model.segment_state(seg, ref=final.ref[seg.rows])
        surrogate = _surrogate(kind, part, final.select(seg.rows), seg.is_last,
                               total.grad[seg.rows], None if norm.grad is None else norm.grad[seg.rows])
        if surrogate.requires_grad:
            surrogate.backward()
    _set_rng_state(after, device)
    return loss.detach(), logits.detach()


@dataclass
class _Resume:
    """Where pass 2 restarts: the random state, the rows still reading and their memory before a segment."""

    rng: tuple
    rows: torch.Tensor
    mems: list


def _read(model: TXLDocumentClassifier, input_ids, lengths, first: int) -> tuple[PoolState, _Resume | None]:
    """Pass 1: the final pooled state, and (`first` > 0) what segment `first` starts from."""
    if first == 0:
        return model.read(input_ids, lengths)[0], None
    kept = []

    def capture(index, seg):  # the generator reads segment `first` after segment `first - 1` is handed out
        if index == first - 1:
            kept.append(_Resume(_rng_state(input_ids.device), seg.rows, seg.mems))
    final, _ = model.read(input_ids, lengths, on_segment=capture)
    return final, kept[0] if kept else None


def _surrogate(kind, part: PoolState, final: PoolState, is_last, g_total, g_norm) -> torch.Tensor:
    """A scalar whose gradient w.r.t. the parameters is this segment's share of d loss / d params."""
    if kind == "max":  # the gradient reaches the dimensions whose maximum lies in this segment
        return (g_total * part.total * (part.total == final.total)).sum()
    if kind == "last":
        return (g_total * part.total * is_last[:, None]).sum()
    value = (g_total * part.total).sum()
    return value + (g_norm * part.norm).sum() if g_norm is not None else value
