"""Classify texts with a model directory: the one inference path `txl classify` and the app both call.

Texts are tokenized in one batch call, sorted by length and grouped so that each batch holds documents of
similar length (little padding); the classifier reads every document whole, segment by segment.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from txl_core import packed_linear

from .metrics import decide
from .modeldir import ModelDir

PRECISIONS = ("auto", "float32", "bf16", "int8")


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
    # a model with an n-gram component (pipelines/ngram.py): what each part alone would predict, and (explain)
    # the n-grams that raise the predicted class's fused logit most, with their part of it
    encoder_label: str = ""
    ngram_label: str = ""
    terms: list[tuple[str, float]] = field(default_factory=list)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """`auto`: bf16 on a GPU; on a CPU with bf16 matrix units bf16 for inference (measured to cost no test
    accuracy, benchmarks/RESULTS.md) and float32 for training (not yet measured there); else float32."""
    if precision != "auto":
        return precision
    if device.type == "cuda" or (not training and cpu_has_native_bf16()):
        return "bf16"
    return "float32"  # without bf16 units torch's bf16 matmul is a slow fallback


def cpu_has_native_bf16() -> bool:
    """Whether bf16 matmuls run on bf16 units (AVX512-BF16, AMX): torch's own test for its oneDNN bf16 path.

    Without them (e.g. AVX2-only CPUs) torch falls back to a generic bf16 GEMM: the classifier ran 6-8x slower
    than float32 here (20x with 2 busy threads); attention and masking are not the cause.
    """
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap (glibc only); returns whether the setting was applied.

    By default glibc hands every allocation over 32 MB (e.g. the (B, H, T, K) attention scores from batch 8
    up) to a fresh mmap, so each segment pays for zeroing its pages again: measured 1.5-2x slower at batch 16.
    The price is a resident set that stays at its peak instead of shrinking between batches.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's `malloc_trim`); returns whether it ran.

    Batches of changing shapes fragment the heap: freed chunks that no later request fits stay resident,
    with glibc's default as with `tune_cpu_allocator`, and the resident set only grows (fine-tuning MiniLM on
    20newsgroups: 6.5 GB after a minute, 13 GB after an hour). Long loops call it between steps
    (`FreeMemoryEvery`); the next step pays once for fresh pages. Measured on a MiniLM run on imdb: one call
    took the resident set from 9.4 GB to 2.1 GB.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True


class FreeMemoryEvery:
    """`tick()` after each step of a long loop: `release_free_memory` at most once per `seconds`."""

    def __init__(self, seconds: float = 60.0):
        self.seconds, self.last = seconds, time.monotonic()

    def tick(self) -> bool:
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return release_free_memory()


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
    Where oneDNN runs bf16 its linear layers are then prepacked (`txl_core.packed_linear.PackedLinear`: the weight
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
    encodings = md.tokenizer.encode_batch([t if isinstance(t, str) and t.strip() else "" for t in texts],
                                          add_special_tokens=False)
    lengths = [len(e.ids) for e in encodings]
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


@torch.inference_mode()
def _predict_batch(md: ModelDir, encodings, texts: list[str], *, explain: bool) -> list[Prediction]:
    lengths = torch.tensor([len(e.ids) for e in encodings])
    ids = torch.zeros(len(encodings), int(lengths.max()), dtype=torch.long)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
    with _autocast(md):
        out = md.model(ids.to(md.device), lengths.to(md.device), explain=explain)
    encoder_logits = out.logits.float().cpu()
    scores = md.ngram.scores(texts) if md.ngram is not None else None
    logits = encoder_logits if scores is None else md.ngram.fuse(encoder_logits, scores)
    probs = _probabilities(md, logits)
    preds = []
    for row, e in enumerate(encodings):
        pred = _prediction(md, probs[row], len(e.ids))
        if scores is not None:
            pred.encoder_label = _label_of(md, _probabilities(md, encoder_logits[row:row + 1])[0],
                                           md.model.config.thresholds)
            pred.ngram_label = _label_of(md, _probabilities(md, torch.as_tensor(scores[row:row + 1]))[0], None)
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
        return "|".join(n for n, c in zip(md.labels, decide(probs.numpy()[None], thresholds)[0]) if c)
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
    seg_len, n = md.model.config.segment_len, len(encoding.ids)
    out = []
    for s, value in enumerate(contrib.tolist()):
        start, end = s * seg_len, min(n, (s + 1) * seg_len)
        out.append(SegmentExplanation(start, end, encoding.offsets[start][0], encoding.offsets[end - 1][1],
                                      value, abs(value) / total))
    return out
