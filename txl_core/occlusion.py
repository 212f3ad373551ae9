"""Exact segment occlusion: the classifier's logits with each segment of a document removed, as if it had never
been there, at a bounded multiple of the cost of reading the document once.

Shapes: N document length, T segment length, M memory, L layers, C d_model, S segments, K labels.

Removing segment k (tokens [kT, (k+1)T)) leaves every other segment's tokens and their places within their
segments unchanged; only what the following segments read from memory changes. Layer i of a segment reads the
memory of layer i's inputs over the last M positions, which span r = ceil(M / T) segments, so the input of layer
i changes only in the i * r segments after k, and the final hidden states (the pooled ones) only in the W = L * r
segments after k. So the occluded document is: the segments before k (their pooled statistics, as read once),
then segments k+1 .. k+W read again from the memory the document had before k, then the segments after those
(as read once). Pooling is a sum of per-segment statistics (`pooling.combine`), so the pooled vector of every
occluded document is put together from those parts: reading every occlusion costs W segment reads per segment,
(L * r + 1) times reading the document in all, whatever its length (tests/test_occlusion.py checks the result
against reading each occluded document from scratch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .classifier import TXLDocumentClassifier
from .pooling import PoolState, combine


@dataclass
class Occlusion:
    """`logits` (K,) of the whole document; `occluded` (S, K): row k with segment k removed (the head's bias
    alone when nothing is left); `segment_reads`: segments read in all (S for the document itself)."""

    logits: torch.Tensor
    occluded: torch.Tensor
    segment_reads: int


def window(model: TXLDocumentClassifier) -> int:
    """W: the segments after a removed one whose final hidden states change."""
    cfg = model.config
    if cfg.mem_len <= 0:
        return 0  # segments read independently: removing one changes no other
    return cfg.n_layer * math.ceil(cfg.mem_len / cfg.segment_len)


@torch.no_grad()
def occlude_segments(model: TXLDocumentClassifier, input_ids: torch.Tensor, *, on_segment=None) -> Occlusion:
    """Logits of one document (`input_ids` (N,) or (1, N)) and of the document with each segment removed, in
    one pass: each segment k's replacement window is read as soon as the memory before k is known, so only
    that memory and the per-segment pooled statistics are kept (memory bounded by M, not by N).
    `on_segment(done, total)` is called after each segment and its window."""
    ids = input_ids.reshape(1, -1)
    lengths = torch.tensor([ids.size(1)], device=ids.device)
    kind, w = model.config.pooling, window(model)
    total = -(-ids.size(1) // model.config.segment_len)
    parts: list[PoolState] = []  # the document's own pooled statistics, one per segment
    replaced: list[list[PoolState]] = []  # per k: segments k+1 .. k+W read without segment k
    before, reads = None, 0  # the memory the document had before segment k
    for k, seg in enumerate(model.iter_segments(ids, lengths)):
        parts.append(model.segment_state(seg))
        reads += 1
        redone = [model.segment_state(s) for s in model.iter_segments(ids, lengths, mems=before, first=k + 1,
                                                                      count=w)] if w else []
        replaced.append(redone)
        reads += len(redone)
        before = seg.mems
        if on_segment is not None:
            on_segment(k + 1, total)
    n = len(parts)
    prefix: list[PoolState | None] = [None]  # prefix[k]: segments 0 .. k-1 combined (None: no segment)
    for p in parts:
        prefix.append(p if prefix[-1] is None else combine(kind, prefix[-1], p))
    suffix: list[PoolState | None] = [None]  # built backwards: suffix[k] is segments k .. n-1
    for p in parts[::-1]:
        suffix.append(p if suffix[-1] is None else combine(kind, p, suffix[-1]))
    suffix = suffix[::-1]
    logits = model.classify(prefix[n])[0]
    rows = []
    for k in range(n):
        pieces = [p for p in (prefix[k], *replaced[k], suffix[min(n, k + 1 + w)]) if p is not None]
        rows.append(model.head.bias if not pieces else model.classify(_reduce(kind, pieces))[0])
    return Occlusion(logits, torch.stack(rows), reads)


def _reduce(kind: str, states: list[PoolState]) -> PoolState:
    out = states[0]
    for s in states[1:]:
        out = combine(kind, out, s)
    return out
