"""Inference projects each row once: the keys and values of the rows that become the next segment's memory.

Shapes: B batch, M memory, K = M + T keys, H heads, D head size.

The next segment's memory rows are rows this segment already projected (`update_mems` keeps the last
`mem_len` of [memory ; this segment's layer inputs]), and a row's keys and values depend only on the row and
the layer's weights. So in inference the model attaches them to the memory it returns (`Memory.kv`, one entry
per layer), the caller hands that memory back with the next segment, and only the segment's own T rows are
projected. An entry is used only while its memory tensor (address and version counter) and the layer's weights
(`RelMultiHeadAttn.weights_stamp`) are those it was made from: a memory the caller built, sliced or modified
is simply projected again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..memory import Memory

if TYPE_CHECKING:
    from ..attention import RelMultiHeadAttn

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class KeptRows:
    """The keys and values (2 x (B, H, M, D)) of one layer's memory rows and what they were computed from."""

    kv: KV
    mem_version: int
    mem_address: int
    stamp: tuple


def _version(t: torch.Tensor) -> int:
    """`t`'s version counter (bumped by in-place writes); 0 for an inference tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return 0


def _last(parts: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    """The last n rows (dim 2) of the K rows given as one (B, H, K, D) tensor or as (earlier rows, later rows),
    joined only when they span both parts (a memory longer than a segment)."""
    if len(parts) == 1:
        return parts[0][:, :, -n:]
    first, second = parts
    if n <= second.size(2):
        return second[:, :, -n:]
    return torch.cat([first[:, :, -(n - second.size(2)):], second], dim=2)


def _rows(mem: torch.Tensor, kv: KV, stamp) -> KeptRows | None:
    return None if stamp is None or mem.size(1) == 0 else KeptRows(kv, _version(mem), mem.data_ptr(), stamp)


def kept(mems: list[torch.Tensor] | None, layer: int, attn: RelMultiHeadAttn) -> KV | None:
    """The keys and values kept with `mems[layer]`, or None (none kept, or the memory or the weights changed)."""
    entries = getattr(mems, "kv", None)
    entry = None if entries is None else entries[layer]
    if entry is None:
        return None
    mem = mems[layer]
    if (entry.mem_address != mem.data_ptr() or entry.mem_version != _version(mem)
            or entry.kv[0].shape[0] != mem.shape[0] or entry.kv[0].size(2) != mem.size(1)
            or entry.stamp != attn.weights_stamp()):
        return None
    return entry.kv


def keep(mems: Memory, parts: list, attns: list[RelMultiHeadAttn]) -> Memory:
    """Attach to each layer's new memory (the last M of the K rows just attended) the last M of the keys and
    values `RelMultiHeadAttn.forward` returned for those K rows."""
    mems.kv = [_rows(mem, (_last(k, mem.size(1)), _last(v, mem.size(1))), attn.weights_stamp())
               for mem, (k, v), attn in zip(mems, parts, attns)]
    return mems


def select(mems: list[torch.Tensor], index: torch.Tensor, attns: list[RelMultiHeadAttn]) -> Memory:
    """`[m[index] for m in mems]`, with the rows kept for them selected alike."""
    out = Memory(m[index] for m in mems)
    entries = []
    for layer, (new, attn) in enumerate(zip(out, attns)):
        kv = kept(mems, layer, attn)
        entries.append(None if kv is None else _rows(new, (kv[0][index], kv[1][index]), attn.weights_stamp()))
    out.kv = entries
    return out
