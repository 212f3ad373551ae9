"""Shared helpers for the tests: tiny seeded configs and the location of the reference goldens.

Tiny configs use pairwise distinct sizes so that a swapped axis changes a shape and fails loudly:
B=2 batch, L=3 layers, H=4 heads, D=5 head size, M=7 memory, T=9 segment, 11 classifier segment,
C=24 model width, E=32 embedding width, F=40 inner width, V=53 vocabulary (clusters 13, 18, 22).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from txl_core import TXLConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"  # the reference goldens, beside the repo
FIXTURE_GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"  # one golden shipped with the tests

BSZ, QLEN = 2, 9

# Tensors here are tiny: extra threads only add synchronisation, and on a shared 2-core machine they made the
# suite about three times slower.
torch.set_num_threads(1)


def tiny_config(**overrides) -> TXLConfig:
    """A 3-layer model of a few thousand parameters, eval-exact (no dropout) unless overridden."""
    base = dict(
        vocab_size=53, d_model=24, d_embed=32, n_head=4, d_head=5, d_inner=40, n_layer=3,
        cutoffs=[13, 31], div_val=2, mem_len=7, clamp_len=0, same_length=False, untie_r=True,
        dropout=0.0, dropatt=0.0, segment_len=11, classifier_dropout=0.0,
    )
    base.update(overrides)
    return TXLConfig(**base)


def perturb(model: torch.nn.Module, *, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Give every parameter O(1) random values, so that every path (biases, LayerNorm, u, v) matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def random_ids(*shape: int, vocab: int = 53, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def die_in_step(monkeypatch, cls, n: int):
    """`cls.step` raises KeyboardInterrupt (a killed run) in its n-th call from now; returns the real `step`,
    to set back for the resumed run."""
    real, calls = cls.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    return real
