"""The strong simple baseline: TF-IDF (word 1-2-grams, sublinear tf) + a linear SVM, from scikit-learn.

Run it on your own split to see what the neural model is up against on your data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer
from sklearn.svm import LinearSVC

from .io import load_labeled
from .labels import LabelSet
from .metrics import compute_metrics
from .modeldir import write_atomic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="labelled training file")
    p.add_argument("--test", required=True, help="labelled test file (may be the same file with a split column)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split-column", default="split")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default 1.0)")
    p.add_argument("--out", help="write the metrics as JSON here")


def fit_predict(train_texts, train_labels, test_texts, *, C: float = 1.0) -> list[str]:
    """Predicted label strings for `test_texts` ('a|b' for multi-label)."""
    labels = LabelSet.from_labels(train_labels)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_df=0.9)
    x_train, x_test = vec.fit_transform(train_texts), vec.transform(test_texts)
    if not labels.multi_label:
        return list(LinearSVC(C=C).fit(x_train, train_labels).predict(x_test))
    mlb = MultiLabelBinarizer(classes=labels.names)
    y = mlb.fit_transform([labels.split(t) for t in train_labels])
    pred = OneVsRestClassifier(LinearSVC(C=C)).fit(x_train, y).predict(x_test)
    return ["|".join(names) for names in mlb.inverse_transform(pred)]


def run(args: argparse.Namespace) -> int:
    common = dict(text_column=args.text_column, label_column=args.label_column, split_column=args.split_column)
    tr_x, tr_y = load_labeled(args.train, split="train", **common)
    te_x, te_y = load_labeled(args.test, split="test", **common)
    started = time.time()
    pred = fit_predict(tr_x, tr_y, te_x, C=args.C)
    labels = LabelSet.from_labels(tr_y + te_y)
    m = compute_metrics(te_y, pred, labels.names, multi_label=labels.multi_label)
    m["seconds"] = round(time.time() - started, 1)
    print(f"txl baseline (TF-IDF + LinearSVC): {m['n_documents']} test documents, accuracy {m['accuracy']:.4f}, "
          f"macro-F1 {m['macro_f1']:.4f}, micro-F1 {m['micro_f1']:.4f} ({m['seconds']} s)")
    if args.out:
        write_atomic(Path(args.out), json.dumps(m, indent=1) + "\n")
    return 0
