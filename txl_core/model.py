"""The Transformer-XL encoder: adaptive embedding, a stack of relative-attention layers, and memory.

Shapes: B batch, T segment length, M memory length, K = M + T keys, H heads, C = d_model, L = n_layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_mask
from .config import TXLConfig
from .embedding import AdaptiveEmbedding, PositionalEmbedding
from .saving import PretrainedMixin
from .init import init_weights
from .fast.dropout import Dropout
from .layer import DecoderLayer
from .fast import kept_kv
from .memory import Memory, Mems, update_mems


@dataclass
class TXLOutput:
    """`last_hidden_state` (B, T, C); `mems` L x (B, M', C) for the next segment; on request
    `hidden_states` (L + 1) x (B, T, C) (embedding, then every layer's output) and `attentions` L x (B, H, T, K)."""

    last_hidden_state: torch.Tensor
    mems: Memory
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class TXLModel(PretrainedMixin, nn.Module):
    """Transformer-XL encoder. Parameter names equal the reference's `transformer.*` names."""

    def __init__(self, config: TXLConfig):
        super().__init__()
        self.config = config
        self.word_emb = AdaptiveEmbedding(config)
        self.pos_emb = PositionalEmbedding(config.d_model)
        if config.segment_positions:  # BERT's input: LN(token + position within the segment)
            self.seg_pos_emb = nn.Embedding(config.segment_positions, config.d_model)
            self.emb_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.drop = Dropout(config.dropout)
        if not config.untie_r:  # one (u, v) pair shared by every layer, as in the original PyTorch code
            self.r_w_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
            self.r_r_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.apply(lambda m: init_weights(m, config))
        self._pos_cache: dict = {}  # inference only: sinusoids and causal masks per segment shape (nothing else)

    def select_mems(self, mems: Mems, index: torch.Tensor) -> Memory:
        """`[m[index] for m in mems]` (the rows of the documents still reading), with the keys and values
        inference kept for those rows, so the next segment does not project them again."""
        return kept_kv.select(mems, index, [layer.dec_attn for layer in self.layers])

    def _positions(self, key: tuple, *, inference: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sinusoids of distances K-1 ... 0 (to 1-T when bidirectional), (K+future, C), and the causal mask,
        (T, K), or None when bidirectional; `key` = (mlen, qlen, clamp_len, bidirectional, dtype, device). In
        inference they are made once per key: they depend on nothing else."""
        mlen, qlen, clamp_len, bidirectional, dtype, device = key
        cfg = self.config
        key = key + (cfg.mem_len, cfg.same_length)
        hit = self._pos_cache.get(key) if inference else None
        if hit is not None:
            return hit
        future = qlen - 1 if bidirectional else 0
        pos_emb = self.drop(self.pos_emb(mlen + qlen, clamp_len=clamp_len, future=future).to(dtype))
        mask = None if bidirectional else attention_mask(qlen=qlen, mlen=mlen, mem_len=cfg.mem_len,
                                                          same_length=cfg.same_length, device=device)
        if inference:
            if len(self._pos_cache) >= 8:
                self._pos_cache.clear()
            self._pos_cache[key] = (pos_emb, mask)
        return pos_emb, mask

    def forward(self, input_ids: torch.Tensor, *, mems: Mems | None = None, valid: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> TXLOutput:
        """Read one segment.

        Args:
            input_ids: (B, T) token ids.
            mems: L x (B, M, C) from the previous segment, or None for an empty memory.
            valid: (B, T) bool, False = right padding; only bidirectional attention needs it (a causal query
                never sees the padding after it). The memory is never padding: a document ends in its last segment.
        Returns:
            TXLOutput; its `mems` hold the last `mem_len` steps of [mems ; this segment's layer inputs].
        """
        cfg = self.config
        qlen, mlen = input_ids.size(1), 0 if mems is None else mems[0].size(1)
        x = self.word_emb(input_ids)  # (B, T, C)
        if cfg.segment_positions:
            if qlen > cfg.segment_positions:
                raise ValueError(f"a segment of {qlen} tokens exceeds the {cfg.segment_positions} segment positions")
            x = self.emb_norm(x + self.seg_pos_emb.weight[:qlen].to(x.dtype))
        x = self.drop(x)
        inference = not self.training and not torch.is_grad_enabled()
        key = (mlen, qlen, cfg.clamp_len, cfg.bidirectional, x.dtype, x.device)
        pos_emb, mask = self._positions(key, inference=inference)  # (K+future, C), (T, K) causal or None
        if cfg.bidirectional and valid is not None and not bool(valid.all()):
            mask = F.pad(~valid, (mlen, 0))[:, None, None, :]  # (B, 1, 1, K) padding keys
        shared = {} if cfg.untie_r else {"r_w_bias": self.r_w_bias, "r_r_bias": self.r_r_bias}
        if inference:  # pos_emb is then a function of this key
            shared["cache_key"] = key
        hids, probs, kvs, memo = [], [], [], {}
        for i, layer in enumerate(self.layers):
            hids.append(x)
            mem = None if mems is None else mems[i]
            x, p, kv = layer(x, pos_emb=pos_emb, mem=mem, mask=mask, need_probs=output_attentions, memo=memo,
                             mem_kv=kept_kv.kept(mems, i, layer.dec_attn) if inference else None, **shared)
            probs.append(p)
            kvs.append(kv)
        x = self.drop(x)
        new_mems = update_mems(hids, mems, mem_len=cfg.mem_len)
        if inference:  # with gradients a caller may back-propagate into the memory: nothing is kept
            kept_kv.keep(new_mems, kvs, [layer.dec_attn for layer in self.layers])
        return TXLOutput(
            last_hidden_state=x,
            mems=new_mems,
            hidden_states=tuple(hids) + (x,) if output_hidden_states else None,
            attentions=tuple(probs) if output_attentions else None,
        )

