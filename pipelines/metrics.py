"""Classification metrics, from scikit-learn: the numbers `txl train`, `txl evaluate` and the model card share."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def single_label_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro/micro F1, per-class precision/recall/F1/support and the confusion matrix."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n_documents": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(labels)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
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


def compute_metrics(y_true: list[str], y_pred: list[str], labels: list[str], *, multi_label: bool) -> dict:
    """Metrics for label strings; multi-label strings are '|'-joined sets."""
    if multi_label:
        split = lambda ys: [[x for x in y.split("|") if x] for y in ys]  # noqa: E731
        return multi_label_metrics(split(y_true), split(y_pred), labels)
    return single_label_metrics(y_true, y_pred, labels)
