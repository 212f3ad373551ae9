"""Inference projects each row once: the keys and values of the rows that become the next segment's memory.

Shapes: B batch, M memory, K = M + T keys, H heads, D head size.

The next segment's memory rows are rows this segment already projected (`update_mems` keeps the last
`mem_len` of [memory ; this segment's layer inputs]), and a row's keys and values depend only on the row and
the layer's weights. So in inference they are kept beside the memory tensor the model returned, keyed by the
tensor's identity (a weak reference: they are freed with the memory), and the next segment projects only its
own T rows. They are served only while the memory's and the weights' version counters are unchanged; a
memory the caller built, sliced or modified is simply projected again.
"""
from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .attention import RelMultiHeadAttn

KV = tuple[torch.Tensor, torch.Tensor]


def _version(t: torch.Tensor) -> int:
    """`t`'s version counter (bumped by in-place writes); 0 for an inference tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return 0


def _last(rows, n: int) -> torch.Tensor:
    """The last n rows (dim 2) of a (B, H, K, D) tensor or of an (earlier rows, later rows) pair, joined only
    when they span both parts (memory longer than a segment)."""
    if isinstance(rows, torch.Tensor):
        return rows[:, :, -n:]
    first, second = rows
    if n <= second.size(2):
        return second[:, :, -n:]
    return torch.cat([first[:, :, -(n - second.size(2)):], second], dim=2)


class KeptKV:
    """memory tensor (B, M, C) of one layer -> the keys and values of its rows, 2 x (B, H, M, D)."""

    def __init__(self):
        self._kept = WeakIdKeyDictionary()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, mem: torch.Tensor | None, attn: RelMultiHeadAttn) -> KV | None:
        """The kept keys and values of `mem`'s rows, or None (none kept, or `mem` or the weights changed)."""
        hit = None if mem is None or mem.size(1) == 0 else self._kept.get(mem)
        if hit is None or hit[0] != _version(mem) or hit[1] != attn.weights_stamp():
            return None
        return hit[2]

    def keep(self, mems: list[torch.Tensor], kvs: list, attns: list[RelMultiHeadAttn]) -> None:
        """Keep, for each layer's new memory (the last M of the K rows just attended), the last M of its
        keys and values: 2 x (B, H, K, D), or 2 x (memory rows', this segment's rows') pairs."""
        for mem, (k, v), attn in zip(mems, kvs, attns):
            stamp = attn.weights_stamp()
            if stamp is not None and mem.size(1) > 0:
                n = mem.size(1)
                self._kept[mem] = (_version(mem), stamp, (_last(k, n), _last(v, n)))

    def select(self, mems: list[torch.Tensor], index: torch.Tensor,
               attns: list[RelMultiHeadAttn]) -> list[torch.Tensor]:
        """`[m[index] for m in mems]` with what was kept for them selected alike."""
        out = [m[index] for m in mems]
        for old, new, attn in zip(mems, out, attns):
            kv = self.get(old, attn)
            if kv is not None:
                self._kept[new] = (_version(new), attn.weights_stamp(), (kv[0][index], kv[1][index]))
        return out
