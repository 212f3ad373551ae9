"""Whole-document classifier: read every segment with memory, pool every token, classify the pooled vector.

Shapes: B batch, N padded document length, T segment length, M memory, C = d_model, L labels, S segments.

Documents of different lengths share a batch: row b is real up to `lengths[b]` (right padding). Causal
attention already hides the padding from real tokens (bidirectional attention masks it as keys), pooling
ignores it, and a document leaves the batch after its last segment, so a prediction never depends on the
other documents in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .saving import PretrainedMixin
from .config import TXLConfig
from .fast.dropout import Dropout
from .memory import Mems
from .model import TXLModel
from .pooling import PoolState, combine, finalize, segment_state, share


@dataclass
class Segment:
    """One step of `iter_segments`: rows of the batch still reading, their states (R, T, C) and valid mask."""

    start: int
    rows: torch.Tensor
    hidden: torch.Tensor
    valid: torch.Tensor
    is_last: torch.Tensor
    mems: Mems | None = None  # the memory the next segment reads (before finished documents leave it)


@dataclass
class ClassifierOutput:
    """`logits` (B, L); `pooled` (B, C); `segment_logits`: per document an (S_b, L) tensor, each segment's
    additive share of the logits (they sum to `logits - head.bias`), when asked for with `explain=True`."""

    logits: torch.Tensor
    pooled: torch.Tensor
    segment_logits: list[torch.Tensor] | None = None


class TXLDocumentClassifier(PretrainedMixin, nn.Module):
    def __init__(self, config: TXLConfig):
        super().__init__()
        if config.num_labels < 1:
            raise ValueError("invalid TXLConfig: a classifier needs num_labels >= 1")
        self.config = config
        self.transformer = TXLModel(config)
        if config.pooling == "attention":
            self.pool_query = nn.Parameter(torch.zeros(config.d_model))  # zero: starts as mean pooling
        self.dropout = Dropout(config.classifier_dropout)
        self.head = nn.Linear(config.d_model, config.num_labels)
        nn.init.normal_(self.head.weight, 0.0, config.init_std)
        nn.init.zeros_(self.head.bias)

    def iter_segments(self, input_ids: torch.Tensor, lengths: torch.Tensor, *, mems: Mems | None = None,
                      first: int = 0, rows: torch.Tensor | None = None, count: int | None = None) -> Iterator[Segment]:
        """Read the batch segment by segment; finished documents leave the batch (their memory too).

        `first`, `rows`, `mems`: start at segment `first` with the rows still reading there and the memory they
        read (a previous reading's `Segment.rows` / `.mems` one segment earlier); `count`: read at most that many.
        """
        seg_len = self.config.segment_len
        active = torch.arange(input_ids.size(0), device=input_ids.device) if rows is None else rows
        starts = range(first * seg_len, int(lengths.max()), seg_len)
        for start in starts if count is None else starts[:count]:
            alive = lengths[active] > start
            if not bool(alive.all()):
                active = active[alive]
                mems = None if mems is None else self.transformer.select_mems(mems, alive)
            ids = input_ids[active, start:start + seg_len]  # (R, T)
            steps = torch.arange(start, start + ids.size(1), device=ids.device)
            valid = steps[None, :] < lengths[active, None]  # (R, T)
            out = self.transformer(ids, mems=mems, valid=valid)
            mems = out.mems
            yield Segment(start, active, out.last_hidden_state, valid, lengths[active] <= start + seg_len, mems)

    def segment_state(self, seg: Segment, *, ref: torch.Tensor | None = None) -> PoolState:
        scores = seg.hidden @ self.pool_query if self.config.pooling == "attention" else None  # (R, T)
        return segment_state(self.config.pooling, seg.hidden, seg.valid, scores=scores, ref=ref)

    def empty_state(self, batch_size: int, device=None) -> PoolState:
        zeros = torch.zeros(batch_size, device=device)
        return PoolState(torch.zeros(batch_size, self.config.d_model, device=device), zeros, zeros - 1e30)

    def read(self, input_ids, lengths, *, mems=None, keep_parts=False, on_segment=None):
        """Pool the whole documents: returns (final PoolState over B, [(Segment rows, is_last, part state)]).
        `on_segment(index, segment)` is called after each segment, before the next one is read."""
        kind, state, parts = self.config.pooling, self.empty_state(input_ids.size(0), input_ids.device), []
        for index, seg in enumerate(self.iter_segments(input_ids, lengths, mems=mems)):
            if on_segment is not None:
                on_segment(index, seg)
            part = self.segment_state(seg)
            merged = combine(kind, state.select(seg.rows), part)
            state = PoolState(*(full.index_put((seg.rows,), new) for full, new in
                                zip((state.total, state.norm, state.ref), (merged.total, merged.norm, merged.ref))))
            if keep_parts:
                parts.append((seg.rows, seg.is_last, part))
        return state, parts

    def classify(self, state: PoolState) -> torch.Tensor:
        """Logits (B, L) from a pooled state."""
        return self.head(self.dropout(finalize(self.config.pooling, state)))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None, *, mems: Mems | None = None,
                explain: bool = False) -> ClassifierOutput:
        """Classify whole documents.

        Args:
            input_ids: (B, N) token ids, right-padded; lengths: (B,) real lengths (default N for every row);
            mems: the starting memory (default empty; `reference_mems` reproduces the reference).
        """
        if lengths is None:
            lengths = torch.full((input_ids.size(0),), input_ids.size(1), device=input_ids.device)
        state, parts = self.read(input_ids, lengths, mems=mems, keep_parts=explain)
        pooled = finalize(self.config.pooling, state)
        logits = self.head(self.dropout(pooled))
        segment_logits = self._explain(state, parts, input_ids.size(0)) if explain else None
        return ClassifierOutput(logits, pooled, segment_logits)

    def _explain(self, final: PoolState, parts, batch_size: int) -> list[torch.Tensor]:
        per_doc = [[] for _ in range(batch_size)]
        for rows, is_last, part in parts:
            shares = share(self.config.pooling, part, final.select(rows), is_last=is_last)  # (R, C)
            for row, logit in zip(rows.tolist(), shares @ self.head.weight.T):  # (R, L)
                per_doc[row].append(logit)
        return [torch.stack(p) if p else torch.zeros(0, self.config.num_labels) for p in per_doc]
