"""Weight initialisation, the reference's `_init_weights` (HF transfo-xl, `init="normal"`).

Linear and embedding weights, the biases u and v and `cluster_weight` ~ N(0, init_std); the adaptive
projections ~ N(0, proj_init_std); LayerNorm weights ~ N(1, init_std) (not ones, as the reference does);
every bias 0.
"""
from __future__ import annotations

from torch import nn

from .config import TXLConfig


def init_weights(module: nn.Module, config: TXLConfig) -> None:
    """Initialise the parameters a module owns directly (call through `model.apply`)."""
    std, proj_std = config.init_std, config.proj_init_std
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.normal_(module.weight, 1.0, std)
        nn.init.zeros_(module.bias)
    for name, param in module.named_parameters(recurse=False):
        if name in ("r_w_bias", "r_r_bias", "cluster_weight"):
            nn.init.normal_(param, 0.0, std)
        elif name == "cluster_bias":
            nn.init.zeros_(param)
    for name in ("emb_projs", "out_projs"):
        for param in getattr(module, name, []):
            nn.init.normal_(param, 0.0, proj_std)
