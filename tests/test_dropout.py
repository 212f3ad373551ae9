"""The CPU dropout (`txl_core.dropout`): torch's dropout statistics from a cheaper mask, replayable by seed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from txl_core.attention import RelMultiHeadAttn, attention_mask
from txl_core.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p_independently(p):
    torch.manual_seed(0)
    m = keep_mask((400, 1000), p).float()  # 400k draws: the standard error of a rate is below 0.001
    assert abs(m.mean().item() - (1 - p)) < 0.005
    # neighbours share a 64-bit draw: they must still be independent (both kept with probability (1-p)^2)
    for shift in (1, 2, 3, 4):
        both = (m[:, shift:] * m[:, :-shift]).mean().item()
        assert abs(both - (1 - p) ** 2) < 0.005
    assert abs(m.mean(0).std().item() - ((1 - p) * p / 400) ** 0.5) < 0.01  # no column is special


def test_dropout_keeps_the_expectation_and_its_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.randn(300, 500, requires_grad=True)
    y = dropout(x, 0.2)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    assert abs(y.sum().item() - x.sum().item()) < 0.02 * x.abs().sum().item()
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.8)


def test_modes_seeds_and_bf16():
    x = torch.randn(64, 64)
    layer = Dropout(0.3)
    assert layer.eval()(x) is x and Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(5)
    a = layer.train()(x)
    torch.manual_seed(5)
    assert torch.equal(a, layer(x))  # a restored random state replays the mask (the two-pass training step)
    assert not torch.equal(a, layer(x))
    xb = x.bfloat16()
    assert layer(xb).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_attention_dropout_averages_to_the_attention_without_it():
    """The explicit training path (CPU, attention dropout) scales what it keeps so that its mean over masks is
    the evaluation path's attention, which is the fused kernel's (pre-LN: the output is linear in the
    dropped-out probabilities)."""
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, dropatt=0.3, pre_lnorm=True)
    attn = RelMultiHeadAttn(config)
    with torch.no_grad():  # a bare layer's u and v are uninitialised memory (the model initialises them)
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    x, mem, pos = torch.randn(2, 5, config.d_model), torch.randn(2, 3, config.d_model), torch.randn(8, config.d_model)
    mask = attention_mask(qlen=5, mlen=3, mem_len=3, same_length=False)
    with torch.no_grad():
        expected = attn.eval()(x, pos_emb=pos, mem=mem, mask=mask)[0]
        attn.train()
        runs = torch.stack([attn(x, pos_emb=pos, mem=mem, mask=mask)[0] for _ in range(4000)])
    mean = runs.mean(0)
    assert F.mse_loss(runs[0], expected) > 1e-3  # dropout did act
    assert F.mse_loss(mean, expected) < 0.01 * F.mse_loss(runs[0], expected)
