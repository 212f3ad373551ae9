"""Classify texts with a model directory: the one inference path `txl classify` and the app both call.

Texts are tokenized in one batch call, sorted by length and grouped so that each batch holds documents of
similar length (little padding); the classifier reads every document whole, segment by segment.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from pipelines.data import token_ids
from pipelines.model.metrics import decided_labels
from pipelines.model.model_dir import ModelDir
from pipelines.runtime.device import (
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
)
from pipelines.runtime.memory import FreeMemoryEvery, tune_cpu_allocator
from txl_core.fast import packed_linear
from txl_core.pooling import finalize


@dataclass
class SegmentExplanation:
    """Tokens [start, end) of a document = characters [char_start, char_end); `contribution` is the segment's
    additive share of the predicted class's logit, `share` its fraction of all the absolute contributions."""

    start: int
    end: int
    char_start: int
    char_end: int
    contribution: float
    share: float


@dataclass
class Prediction:
    label: str  # multi-label: the predicted labels joined by "|" (those at or above their threshold, at least one)
    score: float  # probability of `label` (multi-label: the highest probability)
    probs: dict[str, float]
    n_tokens: int
    segments: list[SegmentExplanation] = field(default_factory=list)
    error: str = ""
    # a model with an n-gram component (pipelines/model/ngrams.py): what each part alone would predict, and (explain)
    # the n-grams that raise the predicted class's fused logit most, with their part of it
    encoder_label: str = ""
    ngram_label: str = ""
    terms: list[tuple[str, float]] = field(default_factory=list)
    # "low confidence: ..." when the prediction is less certain than the model's usual on validation
    # (pipelines/model/confidence.py); "" otherwise, and for a model without confidence.json
    notice: str = ""


_FREE_MEMORY = FreeMemoryEvery(60)  # one clock for every `predict` call of the process


def prepare(md: ModelDir, *, precision: str = "auto", device: str = "auto", keep_weights: bool = False) -> ModelDir:
    """Move the model to its device and apply the precision's fast path (in place); returns `md`.

    `keep_weights`: leave the weights' dtype alone (a model being trained is evaluated under autocast only).
    """
    dev = resolve_device(device)
    md.precision = resolve_precision(precision, dev)
    md.device = dev
    model = md.model.to(dev).eval()
    if dev.type == "cpu":
        tune_cpu_allocator()
    if md.precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("this CPU has no bf16 matrix units (AVX512-BF16/AMX): bf16 runs several times slower "
                      "than float32 here; use --precision float32 or int8", stacklevel=2)
    if md.precision == "bf16" and dev.type == "cpu" and not keep_weights:
        to_bf16(model.transformer)
    if md.precision == "int8":
        if dev.type != "cpu":
            raise ValueError("int8 runs on the CPU only; use --precision bf16 on a GPU")
        # the encoder only: the head stays float so that the explanation can read its weights
        torch.ao.quantization.quantize_dynamic(model.transformer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    md.model = model
    return md


def to_bf16(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder's weights in bf16 (in place), for CPU inference under autocast. Autocast alone casts every
    weight again for every segment: the whole encoder in bf16 read 1.1x faster (benchmarks/RESULTS.md).
    Where oneDNN runs bf16 its linear layers are then prepacked (`txl_core.fast.packed_linear.PackedLinear`: the weight
    reordered once instead of in every product). The pooling and the head stay float32 (the classifier pools
    float32 copies of the hidden states)."""
    encoder = encoder.to(torch.bfloat16)
    if os.environ.get("TXL_PACKED", "1") != "0" and packed_linear.packing_supported() and all(
            p.device.type == "cpu" for p in encoder.parameters()):
        packed_linear.pack_linears(encoder)
    return encoder


def _autocast(md: ModelDir):
    if md.precision == "bf16":
        return torch.autocast(md.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(lengths: list[int], *, batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `batch_size` docs and `max_tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) >= batch_size or lengths[current[0]] * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def predict(md: ModelDir, texts: Sequence[str], *, batch_size: int = 16, max_tokens: int = 65536,
            explain: bool = False, progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """Classify every text; empty texts get a Prediction with `error` set instead of a label."""
    if md.device is None:
        prepare(md, precision="float32", device="cpu")
    # whitespace alone is no document (as in training, `labeled.load_labeled`), though byte-level BPE would encode it
    encodings = token_ids.encode(md.tokenizer, [t if isinstance(t, str) and t.strip() else "" for t in texts],
                                 offsets=explain)
    lengths = [len(e) for e in encodings]
    results: list[Prediction | None] = [None] * len(texts)
    for i, n in enumerate(lengths):
        if n == 0:
            results[i] = Prediction("", math.nan, {}, 0, error="empty text")
    todo = [i for i, n in enumerate(lengths) if n > 0]
    for batch in _batches([lengths[i] for i in todo], batch_size=batch_size, max_tokens=max_tokens):
        rows = [todo[j] for j in batch]
        batch_texts = [texts[i] for i in rows]
        for i, pred in zip(rows, _predict_batch(md, [encodings[i] for i in rows], batch_texts, explain=explain)):
            results[i] = pred
        if progress:
            progress(len(rows))
        if md.device.type == "cpu":
            _FREE_MEMORY.tick()  # each batch's shapes differ: without it the heap's fragments pile up (6 GB)
    if progress and len(todo) < len(texts):
        progress(len(texts) - len(todo))
    return results


def pooled_features(md: ModelDir, ids: Sequence[Sequence[int]], *, batch_size: int = 16,
                    max_tokens: int = 65536) -> np.ndarray:
    """The pooled vectors (N, C), float32, that the classifier's head reads: each document of token `ids` read
    whole, segment by segment with memory, on `md`'s device and precision (`prepare`)."""
    lengths = [len(x) for x in ids]
    out = np.zeros((len(ids), md.model.config.d_model), dtype=np.float32)
    for batch in _batches(lengths, batch_size=batch_size, max_tokens=max_tokens):
        out[batch] = _pooled_batch(md, [ids[i] for i in batch])
        if md.device.type == "cpu":
            _FREE_MEMORY.tick()
    return out


def padded(ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of documents as a right-padded batch (B, N) and their lengths (B,)."""
    lengths = torch.tensor([len(x) for x in ids])
    batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for row, x in enumerate(ids):
        batch[row, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
    return batch, lengths


@torch.inference_mode()
def _pooled_batch(md: ModelDir, ids: list[Sequence[int]]) -> np.ndarray:
    padded_ids, lengths = padded(ids)
    with _autocast(md):
        state, _ = md.model.read(padded_ids.to(md.device), lengths.to(md.device))
    return finalize(md.model.config.pooling, state).float().cpu().numpy()  # (B, C)


@torch.inference_mode()
def _predict_batch(md: ModelDir, encodings: list[token_ids.Tokens], texts: list[str], *,
                   explain: bool) -> list[Prediction]:
    ids, lengths = padded([e.ids for e in encodings])
    with _autocast(md):
        out = md.model(ids.to(md.device), lengths.to(md.device), explain=explain)
    encoder_logits = out.logits.float().cpu()
    scores = md.ngram.scores(texts) if md.ngram is not None else None
    logits = encoder_logits if scores is None else md.ngram.fuse(encoder_logits, scores)
    probs = _probabilities(md, logits)
    cal = md.confidence
    coverage = md.ngram.coverage(texts) if cal is not None and cal.min_coverage is not None and md.ngram else None
    preds = []
    for row, e in enumerate(encodings):
        pred = _prediction(md, probs[row], len(e))
        if scores is not None:
            pred.encoder_label = _label_of(md, _probabilities(md, encoder_logits[row:row + 1])[0],
                                           md.model.config.thresholds)
            pred.ngram_label = _label_of(md, _probabilities(md, torch.as_tensor(scores[row:row + 1]))[0], None)
        if cal is not None:
            agree = None if scores is None else bool(encoder_logits[row].argmax() == int(scores[row].argmax()))
            pred.notice = cal.notice(float(probs[row].max()), None if coverage is None else float(coverage[row]),
                                     agree)
        if explain:
            pred.segments = _explain(md, out.segment_logits[row].float().cpu(), e, probs[row])
            if md.ngram is not None:
                pred.terms = md.ngram.term_contributions(texts[row], int(probs[row].argmax()))
        preds.append(pred)
    return preds


def _probabilities(md: ModelDir, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if md.multi_label else torch.softmax(logits, dim=-1)


def _thresholds(md: ModelDir) -> list[float] | None:
    """Multi-label decision thresholds: the fused model's when there is an n-gram component."""
    return md.ngram.thresholds if md.ngram is not None else md.model.config.thresholds


def _label_of(md: ModelDir, probs: torch.Tensor, thresholds) -> str:
    if md.multi_label:
        return decided_labels(probs.numpy()[None], md.labels, thresholds)[0]
    return md.labels[int(probs.argmax())]


def _prediction(md: ModelDir, probs: torch.Tensor, n_tokens: int) -> Prediction:
    names = md.labels
    table = {name: float(p) for name, p in zip(names, probs)}
    if md.multi_label:
        return Prediction(_label_of(md, probs, _thresholds(md)), float(probs.max()), table, n_tokens)
    best = int(probs.argmax())
    return Prediction(names[best], float(probs[best]), table, n_tokens)


def _explain(md: ModelDir, segment_logits: torch.Tensor, encoding, probs: torch.Tensor):
    """Per segment: its contribution to the logit of the top class, with the characters it covers."""
    target = int(probs.argmax())
    contrib = segment_logits[:, target]  # (S,)
    total = float(contrib.abs().sum()) or 1.0
    seg_len, n = md.model.config.segment_len, len(encoding)
    out = []
    for s, value in enumerate(contrib.tolist()):
        start, end = s * seg_len, min(n, (s + 1) * seg_len)
        out.append(SegmentExplanation(start, end, int(encoding.offsets[start][0]), int(encoding.offsets[end - 1][1]),
                                      value, abs(value) / total))
    return out
