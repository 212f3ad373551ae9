"""Relative multi-head attention of Transformer-XL (Dai et al. 2019, section 3.3, the "ac + bd" score).

Shapes: B batch, T queries (this segment), M memory, K = M + T keys, H heads, D head size, C = d_model.

Glossary: `ac` = (q + u) k^T, the content term (a) plus the global content bias (c); `bd` = (q + v) R^T, the
position term (b) plus the global position bias (d); u = `r_w_bias`, v = `r_r_bias`; R = `r_net` applied to
the sinusoids of distances K-1 ... 0; `rel_shift` aligns `bd` so that column j holds distance (M + i) - j.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast.routes import attention_route, rel_attn_kernel
from .config import TXLConfig
from .fast.packed_linear import PackedLinear
from .fast.dropout import Dropout
from .fast.softmax_dropout import SoftmaxDropoutValues


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift (..., T, K) so that out[..., i, j] = x[..., i, j + T - 1 - i] for every j <= K - T + i.

    The reference's pad-and-reshape trick: entries right of that boundary hold other rows' values, but they
    are always future keys, which the causal mask hides.
    """
    return shift_padded(F.pad(x, (1, 0)))  # (..., T, K)


def shift_padded(padded: torch.Tensor) -> torch.Tensor:
    """`rel_shift` of x given padded = x with a zero column prepended, (..., T, K+1) -> a view (..., T, K).

    The reference views the padded block as (K+1, T), drops its first row and reshapes (a copy); those are
    the block's flat elements T ... T + T*K - 1, which a slice and a view give without copying anything.
    """
    *lead, qlen, klen1 = padded.shape
    flat = padded.contiguous().flatten(-2)  # (..., T*(K+1))
    return flat[..., qlen:qlen + qlen * (klen1 - 1)].view(*lead, qlen, klen1 - 1)  # (..., T, K)


def shift_bidirectional(x: torch.Tensor, klen: int) -> torch.Tensor:
    """(..., T, K+T-1) scores against distances K-1 ... 1-T -> a view (..., T, K), out[..., i, j] = distance M + i - j.

    Row i finds distance M + i - j in column j + T - 1 - i: flat element T - 1 + i (K+T-2) + j of the row-major
    block, a strided view in which every entry is valid (there is no future key to hide).
    """
    x = x.contiguous()
    *lead, qlen, width = x.shape
    return x.as_strided((*lead, qlen, klen), (*x.stride()[:-2], width - 1, 1), x.storage_offset() + qlen - 1)


def aligned_rows(bias: torch.Tensor) -> torch.Tensor:
    """`bias` (..., T, K) as a slice of a copy whose rows are 16 elements apart: CUDA's fused attention reads
    its additive bias with vector loads and fails with "misaligned address" on the strided views that
    `shift_bidirectional` and `shift_padded` return (rows K + T - 2 elements apart from an odd offset)."""
    klen = bias.size(-1)
    return F.pad(bias, (0, -klen % 16))[..., :klen]


def attention_mask(*, qlen: int, mlen: int, mem_len: int, same_length: bool, device=None) -> torch.Tensor:
    """Bool (T, K), True = masked: future keys, and with `same_length` keys older than `mem_len` steps.

    Identical to the reference's `triu(1 + mlen) + tril(-shift)`, where shift makes each query see mem_len
    keys, itself included, once the memory is full.
    """
    ones = torch.ones(qlen, mlen + qlen, dtype=torch.bool, device=device)
    mask = torch.triu(ones, diagonal=1 + mlen)
    if same_length:
        mask_len = mlen + qlen - mem_len
        shift = qlen - mask_len if mask_len > 0 else qlen
        mask = mask | torch.tril(ones, diagonal=-shift)
    return mask


class RelMultiHeadAttn(nn.Module):
    """Attention sub-layer: post-LN `LN(x + attn(x))` or pre-LN `x + attn(LN(x))`. Names match the reference."""

    def __init__(self, config: TXLConfig):
        super().__init__()
        self.n_head, self.d_head = config.n_head, config.d_head
        self.scale = 1 / config.d_head ** 0.5
        self.pre_lnorm = config.pre_lnorm
        self.same_length = config.same_length
        self.bidirectional = config.bidirectional
        self.qkv_net = nn.Linear(config.d_model, 3 * config.n_head * config.d_head, bias=config.attn_bias)
        self.r_net = nn.Linear(config.d_model, config.n_head * config.d_head, bias=False)
        self.o_net = nn.Linear(config.n_head * config.d_head, config.d_model, bias=config.attn_bias)
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.drop = Dropout(config.dropout)
        self.dropatt = Dropout(config.dropatt)
        if config.untie_r:
            self.r_w_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))  # u, (H, D)
            self.r_r_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))  # v, (H, D)
        self._r_cache: dict = {}  # inference only: r_net(pos_emb) per segment shape, see `position_keys`
        self._generation = 0  # counts casts and moves, see `_apply`

    def _apply(self, fn, recurse=True):
        """A cast or a move (`.to`, `.float`, `.cuda`) gives each weight new values under the same parameter
        object and version counter, possibly at the old address: what was computed from the old values (the
        cached R, the kept keys and values) is forgotten, by the cache and by `weights_stamp`."""
        self._r_cache.clear()
        self._generation += 1
        return super()._apply(fn, recurse)

    def position_keys(self, pos_emb: torch.Tensor, cache_key=None) -> torch.Tensor:
        """R = r_net(pos_emb), (K', H*D). It depends only on the segment's shape and the weights, so with a
        `cache_key` (the model gives one in inference, where the sinusoids are not dropped out) it is made once
        per key and weights and reused: a tenth of a segment's FLOPs at batch 1 (M = T = 256, d_model 256)."""
        if cache_key is None:
            return self.r_net(pos_emb)
        weight = getattr(self.r_net, "weight", None)
        try:  # a weight changed in place (an optimiser step, load_state_dict) bumps its version; a cast moves it
            stamp = (weight._version, weight.data_ptr()) if isinstance(weight, torch.Tensor) else (0, 0)
        except RuntimeError:  # an inference tensor keeps no version counter
            return self.r_net(pos_emb)
        owner = weight if isinstance(weight, torch.Tensor) else self.r_net
        hit = self._r_cache.get(cache_key)
        if hit is not None and hit[0] is owner and hit[1] == stamp:
            return hit[2]
        if len(self._r_cache) >= 8:
            self._r_cache.clear()
        r = self.r_net(pos_emb)
        self._r_cache[cache_key] = (owner, stamp, r)
        return r

    def weights_stamp(self):
        """What the keys and values of a row depend on besides the row: `qkv_net`'s weights (and the layer norm's
        with `pre_lnorm`), as (id, version, address) per weight, which an in-place change (an optimiser step,
        `load_state_dict`) alters, after the count of casts and moves (`_apply`). None when a weight keeps no
        version counter (an inference tensor), and for a dynamically quantized `qkv_net`: it scales its input
        per call, so a row's keys depend on the rows projected with it."""
        if type(self.qkv_net) is not nn.Linear and not isinstance(self.qkv_net, PackedLinear):
            return None
        parts = [self._generation]  # a PackedLinear never changes: its identity is its stamp
        for module in (self.qkv_net, self.layer_norm) if self.pre_lnorm else (self.qkv_net,):
            parts.append(id(module))
            for name in ("weight", "bias"):
                t = getattr(module, name, None)
                if isinstance(t, torch.Tensor):
                    try:
                        parts.append((id(t), t._version, t.data_ptr()))
                    except RuntimeError:
                        return None
        return tuple(parts)

    def forward(self, x, *, pos_emb, mem=None, mask=None, r_w_bias=None, r_r_bias=None, need_probs=False,
                cache_key=None, mem_kv=None, memo=None):
        """One attention sub-layer: softmax(ac + bd) v (section 3.3), on the route `fast.routes` chooses.

        Args:
            x: (B, T, C) this segment; mem: (B, M, C) or None; pos_emb: (K, C) sinusoids of K-1 ... 0, or
            (K+T-1, C) of K-1 ... 1-T when bidirectional; mask: (T, K) bool, True = masked, or when
            bidirectional (B, 1, 1, K) padding keys; r_w_bias / r_r_bias: shared (H, D) biases when `untie_r` is off;
            cache_key: given when `pos_emb` is a function of it (see `position_keys`); mem_kv: the keys and values
            of the memory rows, 2 x (B, H, M, D), when the caller kept them (txl_core/fast/kept_kv.py); memo: a dict
            the layers of one forward share (the mask as an additive bias is made once).
        Returns:
            (out (B, T, C), probs (B, H, T, K) or None, (keys, values) of the K rows: each a tuple of one
            (B, H, K, D) tensor, or of the memory rows' and this segment's, in row order)
        """
        q, k, v, kept = self._qkv(x, mem, mem_kv)  # q (B, H, T, D); k, v of the rows projected here; kept or None
        klen = k.size(2) + (0 if kept is None else kept[0].size(2))
        r = self.position_keys(pos_emb, cache_key).view(-1, self.n_head, self.d_head).transpose(0, 1)  # (H, K, D)
        u = self.r_w_bias if r_w_bias is None else r_w_bias
        v_bias = self.r_r_bias if r_r_bias is None else r_r_bias
        route = attention_route(q, k, v, r, mask=mask, need_probs=need_probs, d_head=self.d_head,
                                dropout=self.dropatt.p if self.training else 0.0, bidirectional=self.bidirectional,
                                same_length=self.same_length, klen=klen)
        if route.name == "kernel":
            vec, probs = rel_attn_kernel(q, u, v_bias, self.scale, kept, k, v, r, causal=not self.bidirectional,
                                         key_len=route.key_len), None  # (B, T, H*D)
        else:
            keys, values = (k, v) if kept is None else (torch.cat([kept[0], k], 2), torch.cat([kept[1], v], 2))
            bd = self._masked(self._position_scores(q, v_bias, r, klen), mask, route, memo)  # (B, H, T, K)
            vec, probs = self._attend(route, q + u[:, None], keys, values, bd)  # (B, H, T, D)
            vec = vec.transpose(1, 2).reshape(x.size(0), x.size(1), -1)  # (B, T, H*D)
        out = self.drop(self.o_net(vec))  # (B, T, C)
        parts = ((k,), (v,)) if kept is None else ((kept[0], k), (kept[1], v))
        return (x + out if self.pre_lnorm else self.layer_norm(x + out)), probs, parts

    def _qkv(self, x, mem, mem_kv):
        """q (B, H, T, D) and the keys and values this call projects: of the T rows when the memory rows' are
        given (`mem_kv`, kept in the same precision), else of all K rows; and the kept ones, or None."""
        qlen = x.size(1)
        if mem_kv is not None:  # a row's keys and values depend on the row only: project this segment's rows
            q, k, v = self._project(self.layer_norm(x) if self.pre_lnorm else x, qlen=qlen)
            if mem_kv[0].dtype == k.dtype:
                return q, k, v, mem_kv
        cat = x if mem is None or mem.size(1) == 0 else torch.cat([mem.to(x.dtype), x], dim=1)  # (B, K, C)
        q, k, v = self._project(self.layer_norm(cat) if self.pre_lnorm else cat, qlen=qlen)
        return q, k, v, None

    def _position_scores(self, q, v_bias, r, klen):
        """bd = (q + v) R^T / sqrt(D), shifted so that column j holds distance M + i - j: (B, H, T, K)."""
        if self.bidirectional:
            return shift_bidirectional(torch.matmul((q + v_bias[:, None]) * self.scale, r.transpose(-1, -2)), klen)
        # A zero first row of R gives bd the zero column rel_shift pads in; the scale rides on the small q.
        r = F.pad(r, (0, 0, 1, 0))  # (H, K+1, D)
        return shift_padded(torch.matmul((q + v_bias[:, None]) * self.scale, r.transpose(-1, -2)))  # (B, H, T, K)

    def _masked(self, bd, mask, route, memo):
        """bd with masked scores at the dtype's minimum; right padding passed as key counts stays unmasked."""
        if mask is None or route.key_len is not None:
            return bd
        if self.bidirectional:
            return bd.masked_fill(mask, torch.finfo(bd.dtype).min)
        # In place (bd is this call's own): without `same_length` the first M + 1 columns are never masked,
        # so only the causal block is touched (attention 1.5x faster than a masked copy, bf16 on a CPU).
        # Added as a (T, T) bias, which is faster than a masked fill over the broadcast batch and heads.
        first = 0 if self.same_length else bd.size(-1) - bd.size(-2)
        bd[..., first:] += _mask_bias(mask, first, bd.dtype, {} if memo is None else memo)  # (B, H, T, K)
        return bd

    def _project(self, cat, *, qlen):
        """q of the segment's rows, k and v of all K rows: (B, H, T, D), (B, H, K, D), (B, H, K, D).

        The memory rows need no query, so with a memory `qkv_net` runs as two products (q on T rows, k and v
        on K rows) instead of one that computes M queries to drop them: 1/6 fewer FLOPs when M = T. A
        quantized `qkv_net` (int8) has no weight slices to take and runs whole.
        """
        bsz, klen, _ = cat.shape
        width = self.n_head * self.d_head
        if klen == qlen or type(self.qkv_net) is not nn.Linear:
            q, k, v = self.qkv_net(cat).view(bsz, klen, 3, self.n_head, self.d_head).unbind(2)  # 3 x (B, K, H, D)
            q = q[:, -qlen:]
        else:
            w, b = self.qkv_net.weight, self.qkv_net.bias
            q = F.linear(cat[:, -qlen:], w[:width], None if b is None else b[:width])  # (B, T, H*D)
            kv = F.linear(cat, w[width:], None if b is None else b[width:])  # (B, K, 2*H*D)
            q = q.view(bsz, qlen, self.n_head, self.d_head)
            k, v = kv.view(bsz, klen, 2, self.n_head, self.d_head).unbind(2)  # 2 x (B, K, H, D)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attend(self, route, q_u, k, v, bd):
        """softmax(ac / sqrt(D) + bd) v on the route's path, `bd` already scaled and masked:
        ((B, H, T, D), probs (B, H, T, K) or None)."""
        p = self.dropatt.p if self.training else 0.0
        if route.name == "sdpa":
            bd = aligned_rows(bd) if q_u.device.type == "cuda" else bd
            return F.scaled_dot_product_attention(q_u, k, v, attn_mask=bd, dropout_p=p, scale=self.scale), None
        score = torch.matmul(q_u, k.transpose(-1, -2)).mul_(self.scale).add_(bd)  # (B, H, T, K), one buffer
        if route.name == "softmax_dropout":  # also without autograd (the first pass of a two-pass step)
            return SoftmaxDropoutValues.apply(score, v, p, route.key_len), None
        probs = torch.softmax(score.float(), dim=-1).to(v.dtype)  # (B, H, T, K)
        return torch.matmul(self.dropatt(probs), v), probs


def _mask_bias(mask: torch.Tensor, first: int, dtype: torch.dtype, memo: dict) -> torch.Tensor:
    """mask[:, first:] as an additive bias (0 or the dtype's minimum), (T, K - first), made once per forward:
    the layers of one forward share its mask and its `memo`."""
    key = ("mask_bias", first, dtype)
    if key not in memo:
        bias = torch.zeros(mask[:, first:].shape, dtype=dtype, device=mask.device)
        memo[key] = bias.masked_fill_(mask[:, first:], torch.finfo(dtype).min)
    return memo[key]
