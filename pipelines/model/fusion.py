"""The fusion of the encoder with the n-gram part (pipelines/model/ngrams.py): its formula and the fit of its weights.

    fused logits = a * log_softmax(encoder logits) + b * svm scores            (single-label)
    fused logits = a * encoder logits + b * svm scores + c                     (multi-label, per label)

a, b (and c) are fit on the validation split (`fit_fusion`): the summed log-loss under a weak prior on
log(b / a), centred on each part's own calibration (`calibrate`).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def fused_logits(encoder: torch.Tensor, scores: torch.Tensor, *, a, b, c=0.0, multi_label: bool) -> torch.Tensor:
    """The fusion of the module docstring; `encoder` (N, L) raw logits, `scores` (N, L) SVM decision values."""
    if multi_label:
        return a * encoder + b * scores + c
    return a * torch.log_softmax(encoder, dim=-1) + b * scores


PRIOR_SD = 1.0  # of log(b / a) around the ratio of the parts' own temperatures: a factor e either way
LOG_TEMPERATURE = (-8.0, 8.0)  # a part that says nothing (or everything) on the validation split stays finite


def calibrate(scores: torch.Tensor, targets: torch.Tensor, *, multi_label: bool,
              steps: int = 100) -> tuple[float, float]:
    """One part alone: the log temperature t (and, multi-label, the shift c) minimising the log-loss of
    exp(t) * scores (+ c)."""
    raw = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([raw], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        loss = _log_loss(torch.exp(raw[0].clamp(*LOG_TEMPERATURE)) * scores + raw[1], targets, multi_label)
        loss.backward()
        return loss

    opt.step(loss_fn)
    t, c = (float(v) for v in raw.detach())
    return _bounded(t) if math.isfinite(t) else 0.0, c if multi_label and math.isfinite(c) else 0.0


def _bounded(log_t: float) -> float:
    return min(max(log_t, LOG_TEMPERATURE[0]), LOG_TEMPERATURE[1])


def _log_loss(z: torch.Tensor, targets: torch.Tensor, multi_label: bool, reduction: str = "mean") -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(z, targets.float(), reduction=reduction) \
        if multi_label else torch.nn.functional.cross_entropy(z, targets, reduction=reduction)


def fit_fusion(encoder: torch.Tensor, scores: np.ndarray, targets: torch.Tensor, *, multi_label: bool,
               prior_sd: float = PRIOR_SD, steps: int = 200) -> dict:
    """The weights a, b > 0 (and c) of the fused logits, the maximum a posteriori on the validation split:
    its summed log-loss plus a Gaussian prior on log(b / a), sd `prior_sd` (a huge one: a plain log-loss fit),
    centred on the ratio of each part's
    own temperature (`calibrate`, each part alone on the same split). Where the split tells the parts apart
    (dozens of errors, imdb, 20newsgroups) the data decide the ratio; where it barely can (a bbc_news split of
    178 documents with one error, made by both parts) a plain log-loss fit leans on whichever part is more
    confident when right, and the prior keeps each part at its own calibrated weight instead (RESULTS.md,
    "Fusion weights under a prior")."""
    encoder, s = encoder.float(), torch.as_tensor(scores).float()
    alone = encoder if multi_label else torch.log_softmax(encoder, dim=-1)
    (ta, ca), (tb, cb) = (calibrate(x, targets, multi_label=multi_label) for x in (alone, s))
    center = tb - ta
    raw = torch.tensor([ta, tb, ca + cb], requires_grad=True)  # log a, log b, c: from the parts' own fits
    opt = torch.optim.LBFGS([raw], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        a, b = torch.exp(raw[:2].clamp(*LOG_TEMPERATURE))
        z = fused_logits(encoder, s, a=a, b=b, c=raw[2], multi_label=multi_label)
        loss = _log_loss(z, targets, multi_label, "sum") + 0.5 * ((raw[1] - raw[0] - center) / prior_sd) ** 2
        loss.backward()
        return loss

    opt.step(loss_fn)
    la, lb, c = (float(v) for v in raw.detach())
    if not all(map(math.isfinite, (la, lb, c))):
        return {"a": 1.0, "b": 0.0, "c": 0.0}
    a, b = (math.exp(_bounded(v)) for v in (la, lb))
    return {"a": round(a, 6), "b": round(b, 6), "c": round(c if multi_label else 0.0, 6),
            "prior_ratio": round(math.exp(center), 6)}
