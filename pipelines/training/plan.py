"""What a `txl train` run will do, resolved once from its options: nothing rewrites it afterwards."""
from __future__ import annotations

import os

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from pipelines.data.labeled_texts import Columns
from pipelines.errors import UserError
from pipelines.training.recipe import Recipe

# The model from random weights (`--init none`, or any shape flag): small enough to train from scratch on a
# 2-core CPU in minutes per epoch on a few thousand documents; larger on a GPU.
ARCH_DEFAULTS = {"d_model": 128, "n_layer": 2, "n_head": 4, "d_inner": 512, "segment_len": 256, "mem_len": 256,
                 "vocab_size": 8000, "pooling": "mean", "dropout": 0.1, "attention": "causal"}
ATTENTIONS = ("causal", "bidirectional")
SHAPE_FLAGS = ("d_model", "n_layer", "n_head", "d_inner", "vocab_size")  # fixed by a pre-trained start


@dataclass(frozen=True)
class TrainPlan:
    """A training run's inputs and choices.

    init: the resolved start (`minilm`, a directory) or None for random weights; arch: the model flags the user
    gave (a read-only mapping; the rest come from the start or ARCH_DEFAULTS, see `architecture`); recipe: the
    optimisation settings with the start's defaults already applied.
    """

    train: str
    out: Path
    recipe: Recipe
    init: str | None = None
    valid: str | None = None
    test: str | None = None
    columns: Columns = Columns()
    positions: str = "segment"
    ngrams: str = "fuse"
    resume: bool = False
    frozen: bool = False  # read with the frozen encoder and fit the head before fine-tuning
    examples: bool = True  # keep one validation document per label for the app (pipelines/model/examples.py)
    arch: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self):
        object.__setattr__(self, "arch", MappingProxyType({k: v for k, v in dict(self.arch).items()
                                                           if v is not None}))


def check_shape(given: Mapping[str, object]) -> None:
    """A new model's shape flags (with the defaults), refused in one line before any data is read when they
    cannot make a model: d_model odd (the relative positions' sinusoids come in sin/cos pairs) or smaller than
    n_head, or a model whose training state would not fit this machine's memory."""
    arch = {name: given.get(name, default) for name, default in ARCH_DEFAULTS.items()}
    d_model, n_head = int(arch["d_model"]), int(arch["n_head"])
    if d_model % 2:
        raise UserError(f"--d-model {d_model} must be even (the relative positions' sinusoids come in sin/cos "
                        f"pairs); try --d-model {d_model + 1}")
    if d_model < n_head:
        raise UserError(f"--d-model {d_model} is smaller than --n-head {n_head}: each head needs at least one "
                        "dimension; choose fewer heads or a wider model")
    d_inner, n_layer, vocab = int(arch["d_inner"]), int(arch["n_layer"]), int(arch["vocab_size"])
    params = vocab * d_model * 2 + n_layer * (5 * d_model * d_model + 2 * d_model * d_inner)
    need, have = 16 * params, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # weights, grads, Adam
    if need > have:
        raise UserError(f"the model these flags describe has about {params / 1e6:,.0f}M parameters: training it "
                        f"needs about {need / 2**30:,.0f} GiB, more than this machine's {have / 2**30:,.0f} GiB; "
                        "choose a smaller --d-model, --n-layer, --d-inner or --vocab-size")


def architecture(given: Mapping[str, object], start: dict | None) -> dict:
    """The model flags: those given, else the start's values, else ARCH_DEFAULTS. A start fixes the shape."""
    shaped = [n for n in SHAPE_FLAGS if n in given]
    if start is not None and shaped:
        raise UserError(f"--{shaped[0].replace('_', '-')} cannot be changed when starting from --init "
                        "(the pre-trained weights fix the model's shape)")
    start = dict(start or {})
    if "bidirectional" in start:
        start["attention"] = ATTENTIONS[bool(start["bidirectional"])]
    return {name: given.get(name, start.get(name, default)) for name, default in ARCH_DEFAULTS.items()}
