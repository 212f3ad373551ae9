"""The stage without back-propagation: the pre-trained encoder reads training documents whole, at inference
speed, and the classifier's head is fit on their pooled vectors.

The head is linear on the pooled vector, so a logistic regression on the pooled vectors of the training
documents is exactly a head for the classifier: a useful model exists after one reading pass, which costs
about a third of a fine-tuning pass per token. Documents are read in a seeded random order, in chunks whose
pooled vectors are cached on disk (keyed by the encoder's weights and the documents), so a killed run reads
each document once; when the time allowed runs out, the head is fit on the random sample read so far, never
on truncated documents.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from pipelines.data import token_ids
from pipelines.data.labels import LabelSet
from pipelines.model.inference import pooled_features, prepare
from pipelines.model.metrics import (
    compute_metrics,
    decided_labels,
    multi_hot,
    tune_thresholds,
)
from pipelines.model.model_dir import ModelDir

CHUNK_TOKENS = 65_536  # tokens per cached chunk (a longer document is a chunk alone): what a kill can lose, and
# how far the reading can run past its deadline when the speed drops
C_GRID = (0.1, 1.0, 10.0)  # inverse regularisation of the head, chosen on validation


@dataclass(frozen=True)
class FrozenResult:
    """What the stage read and the head it fit: `metrics` on the validation split."""

    read: int
    total: int
    tokens: int
    seconds: float
    tokens_per_second: float
    c: float
    metrics: dict
    plan: str = ""  # the plan line the run printed before reading
    valid_seconds: float = 0.0  # reading the validation documents: what a validation pass costs
    valid_probs: list | None = None  # (N_valid, L) the fitted head's probabilities, for the fusion
    valid_index: list | None = None  # the validation documents read (a random sample), None: all of them

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("metrics", "valid_probs", "valid_index")}

    def probs(self) -> np.ndarray | None:
        return None if self.valid_probs is None else np.asarray(self.valid_probs, dtype=np.float32)


def cache_key(md: ModelDir, ids: list[list[int]], *, weights: bool = True) -> str:
    """Names the encoder's weights, its reading settings and the documents: a cache under another key is ignored."""
    h = hashlib.sha256(json.dumps(md.model.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(md.model.transformer.state_dict().items()) if weights else ():
        h.update(name.encode() + t.detach().float().cpu().numpy().tobytes())
    for x in ids:
        h.update(np.asarray(x, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


class FeatureReader:
    """Reads pooled vectors with a frozen copy of the encoder, on `precision` (the machine's inference one)."""

    def __init__(self, md: ModelDir, *, precision: str, device: str):
        frozen = ModelDir(copy.deepcopy(md.model), md.tokenizer, md.labels)
        self.md = prepare(frozen, precision=precision, device=device)
        self.tokens = 0
        self.seconds = 0.0

    def read(self, ids: list[list[int]]) -> np.ndarray:
        started = time.perf_counter()
        out = pooled_features(self.md, ids)
        self.seconds += time.perf_counter() - started
        self.tokens += sum(map(len, ids))
        return out

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def chunks(ids: list[list[int]], order: list[int]) -> list[list[int]]:
    """`order` cut into chunks of about CHUNK_TOKENS tokens: the same cuts for the same documents and order."""
    out, tokens = [[]], 0
    for i in order:
        if out[-1] and tokens + len(ids[i]) > CHUNK_TOKENS:
            out.append([])
            tokens = 0
        out[-1].append(i)
        tokens += len(ids[i])
    return [c for c in out if c]


def read_cached(reader: FeatureReader, ids: list[list[int]], order: list[int], folder: Path, *,
                deadline: float, minimum: int = 0, on_chunk=None) -> dict[int, np.ndarray]:
    """Pooled vectors of the documents `order` names, chunk by chunk, while the next chunk is expected to end
    before `deadline` (time.monotonic(), at the speed read so far) or fewer than `minimum` documents are read;
    chunks already in `folder` are loaded, new ones written there. Returns {document index: vector}."""
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[int, np.ndarray] = {}
    for k, docs in enumerate(chunks(ids, order)):
        path = folder / f"chunk-{k:05d}.safetensors"
        tokens = sum(len(ids[i]) for i in docs)
        if path.is_file():
            saved = load_file(str(path))
            found.update(zip(saved["index"].tolist(), saved["features"]))
        elif len(found) < minimum or \
                time.monotonic() + (tokens / reader.tokens_per_second if reader.tokens else 0.0) <= deadline:
            features = reader.read([ids[i] for i in docs])
            tmp = path.with_suffix(".tmp")
            save_file({"index": np.asarray(docs, dtype=np.int64), "features": features}, str(tmp))
            tmp.replace(path)  # a chunk appears whole or not at all
            found.update(zip(docs, features))
        else:
            break
        if on_chunk is not None:
            on_chunk(len(docs))
    return found


def _fit_head(x: np.ndarray, y: np.ndarray, *, multi_label: bool, n_labels: int, c: float):
    """(W (L, C), b (L,)) of a logistic regression on standardised vectors, mapped back to raw ones."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    if multi_label:
        w, b = np.zeros((n_labels, x.shape[1])), np.zeros(n_labels)
        for j in range(n_labels):
            column = y[:, j]
            if column.min() == column.max():  # a label always or never present: its bias says so
                b[j] = 8.0 if column[0] else -8.0
                continue
            lr = LogisticRegression(C=c, max_iter=2000).fit(z, column)
            w[j], b[j] = lr.coef_[0], lr.intercept_[0]
    else:
        lr = LogisticRegression(C=c, max_iter=2000).fit(z, y)
        w, b = _full_rows(lr, n_labels, x.shape[1])
    w_raw = w / std
    return w_raw.astype(np.float32), (b - w_raw @ mean).astype(np.float32)


def _full_rows(lr: LogisticRegression, n_labels: int, width: int):
    """One row per label: binary sklearn models have one row, and labels absent from the read sample none."""
    w, b = np.zeros((n_labels, width)), np.full(n_labels, -30.0)
    if len(lr.classes_) == 2:
        w[lr.classes_[1]], b[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
        w[lr.classes_[0]], b[lr.classes_[0]] = 0.0, 0.0
    else:
        w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
    return w, b


def _decisions(md: ModelDir, logits: np.ndarray, labels: list[str]) -> tuple[list[str], list[float] | None]:
    """Predicted label strings on the validation split (multi-label: with thresholds tuned there)."""
    if not md.multi_label:
        return [md.labels[i] for i in logits.argmax(1)], None
    probs = 1 / (1 + np.exp(-logits))
    truth = multi_hot([LabelSet(md.labels, True).split(y) for y in labels], md.labels)
    thresholds = tune_thresholds(probs, truth)
    return decided_labels(probs, md.labels, thresholds), thresholds


def _temperature(logits: np.ndarray, labels: list[str], names: list[str]) -> float:
    """The factor t in [0.05, 20] minimising the validation log-loss of t * logits (single-label): a head fit on a
    sample is overconfident, and fine-tuning from overconfident logits starts from a large loss."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor([names.index(v) for v in labels])
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    return float(min(grid, key=lambda t: float(torch.nn.functional.cross_entropy(float(t) * z, y))))


def fit_head(md: ModelDir, train_x: np.ndarray, train_y: torch.Tensor, valid_x: np.ndarray,
             valid_labels: list[str]) -> tuple[float, dict, np.ndarray]:
    """Fit the head on the pooled training vectors, choosing C on validation by macro-F1 (what training keeps
    its best model by); writes the head (and multi-label thresholds) into `md.model`. Returns (C, metrics, the
    validation probabilities (N, L) of the head written)."""
    y = train_y.numpy()
    best = None
    for c in C_GRID:
        w, b = _fit_head(train_x, y, multi_label=md.multi_label, n_labels=len(md.labels), c=c)
        predicted, thresholds = _decisions(md, valid_x @ w.T + b, valid_labels)
        metrics = compute_metrics(valid_labels, predicted, md.labels, multi_label=md.multi_label)
        if best is None or metrics["macro_f1"] > best[1]["macro_f1"]:
            best = (c, metrics, w, b, thresholds)
    c, metrics, w, b, thresholds = best
    if not md.multi_label:  # the same decisions, probabilities calibrated on validation (fine-tuning starts there)
        t = _temperature(valid_x @ w.T + b, valid_labels, md.labels)
        w, b = w * t, b * t
    with torch.no_grad():
        md.model.head.weight.copy_(torch.from_numpy(w))
        md.model.head.bias.copy_(torch.from_numpy(b))
    if md.multi_label:
        md.model.config.thresholds = thresholds
    logits = torch.from_numpy(valid_x @ w.T + b).double()
    probs = torch.sigmoid(logits) if md.multi_label else torch.softmax(logits, dim=1)
    return c, metrics, probs.float().numpy()


def planned(lengths: list[int], order: list[int], *, seconds: float | None, tokens_per_second: float) -> int:
    """How many documents of `order` a reading at `tokens_per_second` gets through in `seconds` (None: all)."""
    if seconds is None:
        return len(order)
    budget, n = seconds * tokens_per_second, 0
    for i in order:
        budget -= lengths[i]
        if budget < 0:
            break
        n += 1
    return n


def reading_order(n: int, seed: int) -> list[int]:
    """The seeded random order the training documents are read in (a deadline leaves a random sample)."""
    return np.random.default_rng(seed).permutation(n).tolist()


def run_frozen_stage(md: ModelDir, train_ids: list[list[int]], train_y: torch.Tensor, valid_texts: list[str],
                     valid_labels: list[str], *, folder: Path, precision: str, device: str, seed: int,
                     allowance=None, valid_seconds: float | None = None, min_valid: int = 0) -> FrozenResult | None:
    """Read the validation documents in a seeded random order (for at most `valid_seconds`, None: all, but at
    least `min_valid` of them), then training documents likewise, and fit the head. `allowance(tokens_per_second,
    seconds spent, validation documents read)`, called once the validation reading has measured the speed, gives
    the seconds from the start the stage may run (None: until every document is read). None when too little could
    be read."""
    started = time.monotonic()
    reader = FeatureReader(md, precision=precision, device=device)
    key = cache_key(md, train_ids)
    valid_ids = [e.ids if len(e) else np.zeros(1, np.int32) for e in token_ids.encode(md.tokenizer, valid_texts)]
    order = reading_order(len(train_ids), seed)
    with tqdm(total=len(train_ids) + len(valid_ids), unit="doc", desc="reading with the frozen encoder",
              dynamic_ncols=True) as bar:
        valid = read_cached(reader, valid_ids, reading_order(len(valid_ids), seed + 1),
                            folder / key / f"valid-{cache_key(md, valid_ids, weights=False)}",
                            deadline=float("inf") if valid_seconds is None else started + valid_seconds,
                            minimum=min_valid, on_chunk=bar.update)
        valid_took = time.monotonic() - started
        seconds = None if allowance is None else allowance(reader.tokens_per_second if reader.tokens else 0.0,
                                                           valid_took, len(valid))
        deadline = float("inf") if seconds is None else started + seconds
        found = read_cached(reader, train_ids, order, folder / key / "train", deadline=deadline, on_chunk=bar.update)
    read = sorted(found)
    if len(read) < 2 or (train_y.dim() == 1 and len({int(train_y[i]) for i in read}) < 2):
        return None
    x = np.stack([found[i] for i in read])
    valid_read = sorted(valid)
    valid_x = np.stack([valid[i] for i in valid_read])
    c, metrics, probs = fit_head(md, x, train_y[read], valid_x, [valid_labels[i] for i in valid_read])
    return FrozenResult(read=len(read), total=len(train_ids), tokens=sum(len(train_ids[i]) for i in read),
                        seconds=round(time.monotonic() - started, 1),
                        tokens_per_second=round(reader.tokens_per_second), c=c, metrics=metrics,
                        valid_seconds=round(valid_took, 1), valid_probs=probs.tolist(),
                        valid_index=None if len(valid_read) == len(valid_ids) else valid_read)
