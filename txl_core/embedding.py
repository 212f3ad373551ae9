"""Token and position embeddings of Transformer-XL.

Shapes: B batch, T segment length, K = M + T keys, C = d_model, E_i = width of cluster i's embedding.

* `AdaptiveEmbedding` (Baevski & Auli, 2019; the reference's `AdaptiveEmbedding`): the vocabulary is split at
  `cutoffs` into clusters; cluster i embeds in `d_embed // div_val**i` dimensions and is projected to C,
  then everything is scaled by sqrt(C) (sqrt(d_model), not sqrt(d_embed), as the reference does).
* `PositionalEmbedding`: the sinusoid of the paper's relative encoding R (Dai et al. 2019, section 3.3),
  evaluated at distances K-1 ... 0, sines then cosines (not interleaved).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TXLConfig


def cluster_bounds(config: TXLConfig) -> list[tuple[int, int]]:
    """[(l_i, r_i)] token-id ranges of the adaptive clusters."""
    ends = [0] + config.cutoffs + [config.vocab_size]
    return list(zip(ends[:-1], ends[1:]))


def cluster_dims(config: TXLConfig) -> list[int]:
    """Embedding width E_i of each cluster (one cluster of d_embed when div_val == 1)."""
    if config.div_val == 1:
        return [config.d_embed]
    return [config.d_embed // config.div_val ** i for i in range(config.n_clusters + 1)]


class AdaptiveEmbedding(nn.Module):
    """Token ids (B, T) -> scaled embeddings (B, T, C). Parameter names match the reference's."""

    def __init__(self, config: TXLConfig):
        super().__init__()
        self.bounds = cluster_bounds(config)
        self.emb_scale = config.d_model ** 0.5
        self.d_model = config.d_model
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterList()
        if config.div_val == 1:
            self.emb_layers.append(nn.Embedding(config.vocab_size, config.d_embed))
            if config.d_model != config.d_embed:
                self.emb_projs.append(nn.Parameter(torch.empty(config.d_model, config.d_embed)))
        else:
            for (left, right), dim in zip(self.bounds, cluster_dims(config)):
                self.emb_layers.append(nn.Embedding(right - left, dim))
                self.emb_projs.append(nn.Parameter(torch.empty(config.d_model, dim)))  # (C, E_i)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if len(self.emb_layers) == 1:
            embed = self.emb_layers[0](input_ids)  # (B, T, E)
            if len(self.emb_projs):
                embed = F.linear(embed, self.emb_projs[0])  # (B, T, C)
            return embed * self.emb_scale
        return self._clustered(input_ids) * self.emb_scale

    def _clustered(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        param = self.emb_projs[0]
        out = torch.zeros(flat.numel(), self.d_model, dtype=param.dtype, device=param.device)  # (B*T, C)
        for (left, right), layer, proj in zip(self.bounds, self.emb_layers, self.emb_projs):
            index = ((flat >= left) & (flat < right)).nonzero().squeeze(-1)
            if index.numel():
                out.index_copy_(0, index, F.linear(layer(flat[index] - left), proj).to(out.dtype))
        return out.view(*input_ids.shape, self.d_model)  # (B, T, C)


class PositionalEmbedding(nn.Module):
    """Relative-position sinusoids R for distances K-1 ... 0 (down to 1-T with `future=T-1`), clamped at `clamp_len`."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("inv_freq", self._frequencies(), persistent=False)

    def _frequencies(self, device=None) -> torch.Tensor:
        return 1 / (10000 ** (torch.arange(0.0, self.d_model, 2.0, device=device) / self.d_model))  # (C/2,)

    def _apply(self, fn, recurse=True):
        """The frequencies stay float32 whatever the module is cast to: rounded to bf16's 8 bits, distance 511
        times a frequency would be off by up to half a radian."""
        super()._apply(fn, recurse)
        self.inv_freq = self._frequencies(self.inv_freq.device)
        return self

    def forward(self, klen: int, *, clamp_len: int, future: int = 0) -> torch.Tensor:
        """(K + future, C): distances K-1 down to -future; `future` = T - 1 for bidirectional attention."""
        pos_seq = torch.arange(klen - 1, -future - 1, -1.0, device=self.inv_freq.device)
        if clamp_len > 0:
            pos_seq = pos_seq.clamp(min=-clamp_len, max=clamp_len)
        sinusoid = torch.outer(pos_seq, self.inv_freq)  # (K + future, C/2)
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)  # (K + future, C)
