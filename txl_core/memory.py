"""Segment-level recurrence (Dai et al. 2019, section 3.2): the memory each layer reads and writes.

Memory is state the caller owns: a list with one (B, M, C) tensor per layer, batch-first. `None` means no
memory yet (the paper's and the original code's first segment). The reference (Hugging Face) instead starts
from `mem_len` zero vectors that are attended to; `reference_mems` builds that start so its numbers can be
reproduced exactly.
"""
from __future__ import annotations

import torch

from .config import TXLConfig

Mems = list[torch.Tensor]


class Memory(list):
    """What `update_mems` returns: L x (B, M, C), a list like any `Mems`. In inference the model also attaches
    `kv`, the keys and values of these rows per layer (txl_core/fast/kept_kv.py), so that the next segment it is
    handed back with does not project them again; a plain list, or a copy, simply has none."""

    kv: list | None = None


def empty_mems(config: TXLConfig, batch_size: int, *, device=None, dtype=torch.float32) -> Mems:
    """Zero-length memory (B, 0, C) per layer: identical in effect to `mems=None`."""
    return [torch.zeros(batch_size, 0, config.d_model, device=device, dtype=dtype) for _ in range(config.n_layer)]


def reference_mems(config: TXLConfig, batch_size: int, *, device=None, dtype=torch.float32) -> Mems:
    """The reference's default first memory: `mem_len` zero vectors per layer, (B, M, C), attended to.

    Pass it as `mems=` on the first segment to reproduce Hugging Face's `mems=None` numbers.
    """
    return [torch.zeros(batch_size, config.mem_len, config.d_model, device=device, dtype=dtype)
            for _ in range(config.n_layer)]


def update_mems(hids: Mems, mems: Mems | None, *, mem_len: int) -> Memory:
    """New memory = the last `mem_len` steps of [old memory ; this segment's layer inputs], detached.

    Args:
        hids: per layer, the input of that layer for this segment, (B, T, C).
        mems: the memory this segment read, (B, M, C) per layer, or None.
    Returns:
        per layer (B, min(M + T, mem_len), C). No gradient flows into the next segment (paper, eq. 1, SG).
    """
    with torch.no_grad():
        if mems is None:
            cat = hids
        else:
            cat = [torch.cat([m.to(h.dtype), h], dim=1) for m, h in zip(mems, hids)]  # (B, M+T, C)
        start = lambda t: max(0, t.size(1) - mem_len)  # noqa: E731
        return Memory(t[:, start(t):].detach() for t in cat)
