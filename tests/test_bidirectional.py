"""Bidirectional attention within a segment (a classifier option; the reference is causal).

Every query sees its whole segment and the memory, with relative distances that go negative for later keys;
the memory stays the past, so a segment never sees the segments after it.
"""
from __future__ import annotations

import pytest
import torch
from conftest import perturb, random_ids, tiny_config

from txl_core import TXLConfig, TXLLMHeadModel
from txl_core.attention import RelMultiHeadAttn, aligned_rows, shift_bidirectional
from txl_core.classifier import TXLDocumentClassifier
from txl_core.embedding import PositionalEmbedding


@pytest.mark.parametrize("qlen,mlen", [(1, 0), (1, 4), (5, 0), (5, 3), (4, 9)])
def test_shift_bidirectional_puts_distance_m_plus_i_minus_j_in_column_j(qlen, mlen):
    klen = mlen + qlen
    dist = torch.arange(klen - 1, -qlen, -1.0)  # the column order of the input: K-1 ... 1-T
    x = dist.expand(2, qlen, klen + qlen - 1)
    expected = torch.tensor([[float(mlen + i - j) for j in range(klen)] for i in range(qlen)])
    assert torch.equal(shift_bidirectional(x, klen), expected.expand(2, qlen, klen))



@pytest.mark.parametrize("qlen,mlen", [(256, 256), (7, 0), (5, 11)])
def test_the_bias_handed_to_cuda_attention_has_aligned_rows_and_the_same_values_and_gradient(qlen, mlen):
    """CUDA's fused attention fails with "misaligned address" on the shifted view; `aligned_rows` gives it rows 16
    elements apart from offset 0, values and gradient unchanged."""
    klen = mlen + qlen
    x = torch.randn(2, 3, qlen, klen + qlen - 1, dtype=torch.bfloat16, requires_grad=True)
    view = shift_bidirectional(x, klen)
    assert view.storage_offset() % 16 or view.stride(-2) % 16  # the view is misaligned: what `aligned_rows` is for
    out = aligned_rows(view)
    assert out.storage_offset() == 0 and out.stride(-1) == 1 and out.stride(-2) % 16 == 0
    assert torch.equal(out, view)
    weight = torch.randn(out.shape, dtype=torch.bfloat16)
    (out.float() * weight).sum().backward()
    grad_aligned = x.grad.clone()
    x.grad = None
    (view.float() * weight).sum().backward()
    assert torch.equal(grad_aligned, x.grad)

def _naive(att: RelMultiHeadAttn, x, mem, clamp_len):
    """The score (q_i + u) k_j + (q_i + v) R_{M+i-j} written out key by key."""
    cat = torch.cat([mem, x], 1)
    bsz, klen, qlen, heads, dh = x.size(0), cat.size(1), x.size(1), att.n_head, att.d_head
    q, k, v = att.qkv_net(cat).view(bsz, klen, 3, heads, dh).unbind(2)
    q = q[:, -qlen:]
    sinus = PositionalEmbedding(x.size(-1))
    out = torch.zeros(bsz, qlen, heads, dh)
    for i in range(qlen):
        dist = klen - qlen + i - torch.arange(klen)  # M + i - j
        table = sinus(klen, clamp_len=clamp_len, future=qlen - 1)  # rows: K-1 ... 1-T
        r = att.r_net(table[klen - 1 - dist]).view(klen, heads, dh)  # (K, H, D)
        score = ((q[:, i, None] + att.r_w_bias) * k).sum(-1) + ((q[:, i, None] + att.r_r_bias) * r).sum(-1)
        probs = (score * att.scale).softmax(1)  # (B, K, H)
        out[:, i] = (probs[..., None] * v).sum(1)
    return att.layer_norm(x + att.o_net(out.reshape(bsz, qlen, -1)))


@pytest.mark.parametrize("mlen,clamp_len", [(0, 0), (6, 0), (6, 4)])
def test_bidirectional_attention_matches_its_definition(mlen, clamp_len):
    cfg = tiny_config(bidirectional=True, clamp_len=clamp_len, attn_bias=True)
    att = RelMultiHeadAttn(cfg)
    with torch.no_grad():
        for p in att.parameters():  # u and v are torch.empty until a model initialises them
            p.fill_(0.1)
    att = perturb(att).eval()
    qlen = 5
    x = torch.randn(2, qlen, cfg.d_model, generator=torch.Generator().manual_seed(1))
    mem = torch.randn(2, mlen, cfg.d_model, generator=torch.Generator().manual_seed(2))
    pos = PositionalEmbedding(cfg.d_model)(mlen + qlen, clamp_len=clamp_len, future=qlen - 1)
    with torch.no_grad():
        got, _, _ = att(x, pos_emb=pos, mem=mem)
        probs_path, probs, _ = att(x, pos_emb=pos, mem=mem, need_probs=True)
        expected = _naive(att, x, mem, clamp_len)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probs_path, expected, rtol=1e-4, atol=1e-5)
    assert probs.triu(diagonal=mlen + 1).sum() > 1  # queries attend to the keys after them


def test_a_later_token_changes_earlier_outputs_but_the_next_segment_does_not():
    model = perturb(TXLDocumentClassifier(tiny_config(num_labels=3, bidirectional=True))).eval()
    seg = model.config.segment_len
    ids = random_ids(1, 2 * seg, seed=3)
    edited = ids.clone()
    edited[0, seg - 1] = (ids[0, seg - 1] + 1) % 53  # the last token of segment 1
    later = ids.clone()
    later[0, seg + 2] = (ids[0, seg + 2] + 1) % 53  # a token of segment 2
    lengths = torch.tensor([2 * seg])
    with torch.no_grad():
        hidden = [[s.hidden for s in model.iter_segments(x, lengths)] for x in (ids, edited, later)]
    assert (hidden[1][0][0, 0] - hidden[0][0][0, 0]).abs().max() > 1e-3  # token 0 saw the last token
    torch.testing.assert_close(hidden[2][0], hidden[0][0], rtol=0, atol=0)  # segment 1 never saw segment 2


def test_bidirectional_is_for_classifiers_only():
    with pytest.raises(ValueError, match="same_length"):
        tiny_config(bidirectional=True, same_length=True)
    with pytest.raises(ValueError, match="language model"):
        TXLLMHeadModel(tiny_config(bidirectional=True))
    cfg = tiny_config(bidirectional=True)
    assert TXLConfig.from_json(cfg.to_json()).bidirectional
