"""Projected adaptive log-softmax (Grave et al. 2017; the reference's `ProjectedAdaptiveLogSoftmax`).

Shapes: N positions, C = d_model, E_i = width of cluster i, V vocabulary, V_0 = cutoffs[0] shortlist size.

The head scores the shortlist plus one logit per tail cluster (appended at the end); a token in tail i
gets log p = head_logprob[V_0 + i - 1] + log_softmax(tail_i)[t - l_i]. Logits of cluster i are
(h P_i) W_i^T + b_i, where P_i (C, E_i) is the same matrix the input embedding uses when tied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TXLConfig
from .embedding import cluster_bounds, cluster_dims


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """Parameter names match the reference's `crit.*`."""

    def __init__(self, config: TXLConfig):
        super().__init__()
        self.bounds = cluster_bounds(config)
        self.shortlist = self.bounds[0][1]
        self.sliced = config.div_val == 1  # one Linear over the whole vocabulary, sliced per cluster
        self.out_layers = nn.ModuleList()
        self.out_projs = nn.ParameterList()
        if config.n_clusters:
            self.cluster_weight = nn.Parameter(torch.empty(config.n_clusters, config.d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(config.n_clusters))
        if self.sliced:
            self.out_layers.append(nn.Linear(config.d_embed, config.vocab_size))
            if config.d_model != config.d_embed:  # one projection per cluster, as the reference has
                for _ in self.bounds:
                    self.out_projs.append(nn.Parameter(torch.empty(config.d_model, config.d_embed)))
        else:
            for (left, right), dim in zip(self.bounds, cluster_dims(config)):
                self.out_layers.append(nn.Linear(dim, right - left))
                self.out_projs.append(nn.Parameter(torch.empty(config.d_model, dim)))  # (C, E_i)

    def _cluster_params(self, i: int):
        """(W_i (V_i, E_i), b_i (V_i,), P_i (C, E_i) or None) of cluster i; the head's W/b include the clusters."""
        if self.sliced:
            left, right = self.bounds[i]
            weight, bias = self.out_layers[0].weight[left:right], self.out_layers[0].bias[left:right]
            proj = self.out_projs[i] if len(self.out_projs) else None
        else:
            weight, bias, proj = self.out_layers[i].weight, self.out_layers[i].bias, self.out_projs[i]
        if i == 0 and len(self.bounds) > 1:
            weight = torch.cat([weight, self.cluster_weight.to(weight.dtype)], dim=0)
            bias = torch.cat([bias, self.cluster_bias.to(bias.dtype)], dim=0)
        return weight, bias, proj

    def _logprobs(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """log_softmax of cluster i's logits, (N, E_i) -> (N, V_i [+ clusters for the head])."""
        weight, bias, proj = self._cluster_params(i)
        if proj is not None:
            hidden = hidden @ proj  # (N, E_i)
        return torch.log_softmax(F.linear(hidden, weight, bias).float(), dim=-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the whole vocabulary: (N, C) -> (N, V)."""
        head = self._logprobs(hidden, 0)  # (N, V_0 + n_clusters)
        if len(self.bounds) == 1:
            return head
        parts = [head[:, : self.shortlist]]
        for i in range(1, len(self.bounds)):
            parts.append(head[:, self.shortlist + i - 1, None] + self._logprobs(hidden, i))  # (N, V_i)
        return torch.cat(parts, dim=-1)  # (N, V)

    def nll(self, hidden: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
        """Per-position negative log-likelihood in input order, 0 where target == ignore_index.

        Only the rows whose target lies in tail i pay for that tail's logits.
        (N, C), (N,) -> (N,)
        """
        head = self._logprobs(hidden, 0)  # (N, V_0 + n_clusters)
        nll = torch.zeros(target.shape, dtype=head.dtype, device=hidden.device)
        for i, (left, right) in enumerate(self.bounds):
            rows = ((target >= left) & (target < right)).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            local = (target[rows] - left)[:, None]
            if i == 0:
                logprob = head[rows].gather(1, local).squeeze(1)
            else:
                tail = self._logprobs(hidden[rows], i)  # (n_i, V_i)
                logprob = head[rows, self.shortlist + i - 1] + tail.gather(1, local).squeeze(1)
            nll = nll.index_put((rows,), -logprob)
        return nll
