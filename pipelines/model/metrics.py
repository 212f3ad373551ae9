"""Classification metrics, from scikit-learn: the numbers `txl train`, `txl evaluate` and the model card share."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


DENSE_CONFUSION = 100  # labels up to which the confusion matrix is kept whole; past it, its largest cells only
TOP_CONFUSIONS = 1000


def single_label_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro/micro F1, per-class precision/recall/F1/support and the confusion matrix: whole up to
    DENSE_CONFUSION labels; past it (a matrix of 10,000 labels is 10^8 cells, 700 MB of JSON) the
    TOP_CONFUSIONS most frequent (true, predicted, count) errors, counted without building the matrix."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    if len(labels) > DENSE_CONFUSION:
        from collections import Counter

        errors = Counter((t, q) for t, q in zip(y_true, y_pred) if t != q)
        confusion = {"confusions": [[t, q, n] for (t, q), n in errors.most_common(TOP_CONFUSIONS)]}
    else:
        confusion = {"confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()}
    return {
        "n_documents": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(labels)},
        "labels": labels,
        **confusion,
    }


def multi_hot(label_lists: list[list[str]], labels: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(label_lists), len(labels)), dtype=int)
    for row, names in enumerate(label_lists):
        for name in names:
            if name in index:
                out[row, index[name]] = 1
    return out


def multi_label_metrics(y_true: list[list[str]], y_pred: list[list[str]], labels: list[str]) -> dict:
    """Subset accuracy, micro/macro F1 and per-label scores over multi-hot label sets."""
    t, p = multi_hot(y_true, labels), multi_hot(y_pred, labels)
    pr, rc, f, s = precision_recall_fscore_support(t, p, zero_division=0)
    return {
        "n_documents": len(y_true),
        "accuracy": float((t == p).all(1).mean()) if len(t) else 0.0,
        "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(t, p, average="micro", zero_division=0)),
        "per_class": {name: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(labels)},
        "labels": labels,
    }


# Multi-label decisions. Each label's threshold is tuned on validation data (`tune_thresholds`): a label needs
# MIN_POSITIVES validation examples to get its own, the others share the one that maximises micro-F1.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
MIN_POSITIVES = 10


def decide(probs: np.ndarray, thresholds: list[float] | np.ndarray | None = None) -> np.ndarray:
    """Multi-hot decisions (N, L) from sigmoid probabilities (N, L): every label at or above its threshold
    (default 0.5), and each document's most probable label in any case (a training row always has one)."""
    probs = np.atleast_2d(np.asarray(probs, dtype=float))
    out = probs >= (0.5 if thresholds is None else np.asarray(thresholds, dtype=float)[None])
    out[np.arange(len(probs)), probs.argmax(1)] = True
    return out


def decided_labels(probs: np.ndarray, names: list[str], thresholds=None) -> list[str]:
    """`decide`'s multi-hot decisions as label strings, 'a|b' per document."""
    return ["|".join(n for n, c in zip(names, row) if c) for row in decide(probs, thresholds)]


def _f1(truth: np.ndarray, chosen: np.ndarray) -> float:
    tp = float((truth & chosen).sum())
    denominator = float(truth.sum() + chosen.sum())
    return 2 * tp / denominator if denominator else 0.0


def tune_thresholds(probs: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per-label thresholds from validation probabilities (N, L) and true multi-hot rows (N, L): the grid value
    with the best micro-F1 for all labels, then, for each label with MIN_POSITIVES examples, the one with its
    best F1 (ties go to the value nearest the shared one)."""
    probs, truth = np.asarray(probs, dtype=float), np.asarray(truth).astype(bool)
    top = np.zeros_like(truth)
    top[np.arange(len(probs)), probs.argmax(1)] = True  # `decide` keeps these whatever the threshold

    def best(scores: list[float], near: float) -> float:
        high = max(scores)
        return float(min((t for t, s in zip(THRESHOLD_GRID, scores) if s >= high - 1e-12), key=lambda t: abs(t - near)))

    shared = best([_f1(truth, (probs >= t) | top) for t in THRESHOLD_GRID], 0.5)
    thresholds = [shared] * probs.shape[1]
    for j in np.flatnonzero(truth.sum(0) >= MIN_POSITIVES):
        thresholds[j] = best([_f1(truth[:, j], (probs[:, j] >= t) | top[:, j]) for t in THRESHOLD_GRID], shared)
    return thresholds


def compute_metrics(y_true: list[str], y_pred: list[str], labels: list[str], *, multi_label: bool) -> dict:
    """Metrics for label strings; multi-label strings are '|'-joined sets."""
    if multi_label:
        split = lambda ys: [[x for x in y.split("|") if x] for y in ys]  # noqa: E731
        return multi_label_metrics(split(y_true), split(y_pred), labels)
    return single_label_metrics(y_true, y_pred, labels)
