"""One Transformer-XL decoder layer: relative attention, then the position-wise feed-forward network.

Shapes: B batch, T segment length, M memory, K = M + T keys, C = d_model, F = d_inner.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import RelMultiHeadAttn
from .config import TXLConfig
from .fast.dropout import Dropout


class PositionwiseFF(nn.Module):
    """post-LN `LN(x + FF(x))` or pre-LN `x + FF(LN(x))`; `CoreNet.0` / `CoreNet.3` are the reference's names."""

    def __init__(self, config: TXLConfig):
        super().__init__()
        self.pre_lnorm = config.pre_lnorm
        self.CoreNet = nn.Sequential(
            nn.Linear(config.d_model, config.d_inner),
            nn.ReLU(inplace=True) if config.ff_activation == "relu" else nn.GELU(), Dropout(config.dropout),
            nn.Linear(config.d_inner, config.d_model), Dropout(config.dropout),
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_lnorm:
            return x + self.CoreNet(self.layer_norm(x))  # (B, T, C)
        return self.layer_norm(x + self.CoreNet(x))  # (B, T, C)


class DecoderLayer(nn.Module):
    def __init__(self, config: TXLConfig):
        super().__init__()
        self.dec_attn = RelMultiHeadAttn(config)
        self.pos_ff = PositionwiseFF(config)

    def forward(self, x, *, pos_emb, mem=None, mask=None, r_w_bias=None, r_r_bias=None, need_probs=False,
                cache_key=None, mem_kv=None, memo=None):
        """x (B, T, C), mem (B, M, C) -> (out (B, T, C), attention probs (B, H, T, K) or None, the keys and values
        of the K rows); `mem_kv`, `memo`: see `RelMultiHeadAttn.forward`."""
        x, probs, kv = self.dec_attn(x, pos_emb=pos_emb, mem=mem, mask=mask, r_w_bias=r_w_bias, r_r_bias=r_r_bias,
                                     need_probs=need_probs, cache_key=cache_key, mem_kv=mem_kv, memo=memo)
        return self.pos_ff(x), probs, kv
