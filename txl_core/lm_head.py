"""Transformer-XL language model: the encoder plus the projected adaptive log-softmax, weights tied.

Shapes: B batch, T segment length, V vocabulary, C = d_model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adaptive_softmax import ProjectedAdaptiveLogSoftmax
from .config import TXLConfig
from .saving import PretrainedMixin
from .init import init_weights
from .memory import Mems
from .model import TXLModel


@dataclass
class TXLLMOutput:
    """`logprobs` (B, T, V) or None; `losses` (B, T-1) per-token NLL in token order (0 at ignored labels);
    `loss` their mean over the labelled positions; `mems`, `hidden_states`, `attentions` as in `TXLOutput`."""

    logprobs: torch.Tensor | None
    losses: torch.Tensor | None
    loss: torch.Tensor | None
    mems: Mems
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class TXLLMHeadModel(PretrainedMixin, nn.Module):
    def __init__(self, config: TXLConfig):
        super().__init__()
        if config.bidirectional:
            raise ValueError("invalid TXLConfig: a language model cannot be bidirectional (it would see its targets)")
        self.config = config
        self.transformer = TXLModel(config)
        self.crit = ProjectedAdaptiveLogSoftmax(config)
        self.crit.apply(lambda m: init_weights(m, config))
        self.tie_weights()

    def tied_pairs(self) -> list[tuple[str, str]]:
        """(head parameter, embedding parameter) names that share one tensor, as the reference ties them.

        With div_val == 1 every cluster's head projection ties to the single input projection."""
        cfg, pairs = self.config, []
        if cfg.tie_word_embeddings:
            pairs += [(f"crit.out_layers.{i}.weight", f"transformer.word_emb.emb_layers.{i}.weight")
                      for i in range(len(self.crit.out_layers))]
        n_emb_projs = len(self.transformer.word_emb.emb_projs)
        for i, tie in enumerate(cfg.tie_projs):
            if tie and i < len(self.crit.out_projs) and n_emb_projs:
                pairs.append((f"crit.out_projs.{i}", f"transformer.word_emb.emb_projs.{i if cfg.div_val > 1 else 0}"))
        return pairs

    def tie_weights(self) -> None:
        emb = self.transformer.word_emb
        for head_name, emb_name in self.tied_pairs():
            i, j = int(head_name.split(".")[2]), int(emb_name.split(".")[-1 if "projs" in emb_name else -2])
            if "out_layers" in head_name:
                self.crit.out_layers[i].weight = emb.emb_layers[j].weight
            else:
                self.crit.out_projs[i] = emb.emb_projs[j]

    def forward(self, input_ids: torch.Tensor, *, mems: Mems | None = None, labels: torch.Tensor | None = None,
                return_logprobs: bool = True, output_hidden_states: bool = False,
                output_attentions: bool = False) -> TXLLMOutput:
        """Read one segment and score it. Position t predicts labels[t + 1] (the shift happens here).

        Args:
            input_ids: (B, T); labels: (B, T) or None, -100 = ignored; mems: as in `TXLModel.forward`.
        """
        out = self.transformer(input_ids, mems=mems, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        hidden = out.last_hidden_state  # (B, T, C)
        bsz, qlen, _ = hidden.shape
        logprobs = self.crit(hidden.reshape(bsz * qlen, -1)).view(bsz, qlen, -1) if return_logprobs else None
        losses = loss = None
        if labels is not None:
            losses = self.crit.nll(hidden[:, :-1].reshape(-1, hidden.size(-1)),
                                   labels[:, 1:].reshape(-1)).view(bsz, qlen - 1)  # (B, T-1)
            keep = labels[:, 1:] != -100
            loss = losses.sum() / keep.sum().clamp(min=1)
        return TXLLMOutput(logprobs, losses, loss, out.mems, out.hidden_states, out.attentions)
