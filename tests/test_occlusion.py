"""Exact segment occlusion (txl_core/occlusion.py): each row equals the classifier reading the document with that
segment's tokens removed from scratch, for memories spanning one and several segments, mean and attention
pooling, a last segment shorter than the others, and no memory; and it costs (W + 1) reads of the document."""
from __future__ import annotations

import pytest
import torch

from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier
from txl_core.occlusion import occlude_segments, window


def _model(**overrides) -> TXLDocumentClassifier:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, d_model=16, n_head=2, d_head=8, d_inner=32, n_layer=2, segment_len=5, mem_len=5,
               num_labels=3, dropout=0.0, dropatt=0.0, pooling="mean", cutoffs=[])
    cfg.update(overrides)
    model = TXLDocumentClassifier(TXLConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():  # random, non-degenerate weights: every path carries signal
            p.add_(0.3 * torch.randn_like(p))
    return model


def _brute_force(model, ids: torch.Tensor, k: int) -> torch.Tensor:
    t = model.config.segment_len
    kept = torch.cat([ids[:k * t], ids[(k + 1) * t:]])
    if len(kept) == 0:
        return model.head.bias.detach()
    with torch.no_grad():
        return model(kept[None]).logits[0]


@pytest.mark.parametrize("overrides", [{}, {"mem_len": 12}, {"pooling": "attention"}, {"mem_len": 0},
                                       {"n_layer": 3, "mem_len": 3}, {"bidirectional": True, "same_length": False}])
@pytest.mark.parametrize("n_tokens", [1, 5, 23, 41])
def test_each_row_is_the_document_read_without_that_segment(overrides, n_tokens):
    model = _model(**overrides)
    ids = torch.randint(0, 50, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens))
    out = occlude_segments(model, ids)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(ids[None]).logits[0], atol=1e-5, rtol=1e-5)
    n_segments = -(-n_tokens // model.config.segment_len)
    assert out.occluded.shape == (n_segments, 3)
    for k in range(n_segments):
        torch.testing.assert_close(out.occluded[k], _brute_force(model, ids, k), atol=1e-5, rtol=1e-5)


def test_the_cost_is_bounded_by_the_window_whatever_the_length():
    model = _model()
    w = window(model)
    assert w == 2  # 2 layers, a memory of one segment
    for n_segments in (3, 10, 40):
        out = occlude_segments(model, torch.randint(0, 50, (5 * n_segments,)))
        assert n_segments <= out.segment_reads <= (w + 1) * n_segments
    assert window(_model(mem_len=12)) == 2 * 3 and window(_model(mem_len=0)) == 0
