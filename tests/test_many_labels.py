"""Thousands of labels: the outputs scale with the labels, not with their square, and pandas stays quiet."""
from __future__ import annotations

import json
import warnings

import pandas as pd

from pipelines.data.writers import output_columns, result_columns
from pipelines.model.inference import Prediction
from pipelines.model.metrics import DENSE_CONFUSION, compute_metrics


def test_past_a_size_the_confusion_matrix_is_its_largest_cells():
    labels = [f"l{i:04d}" for i in range(3000)]
    truth = [labels[i % 3000] for i in range(9000)]
    pred = [labels[(i + (i % 13 == 0)) % 3000] for i in range(9000)]  # every 13th document one label off
    metrics = compute_metrics(truth, pred, labels, multi_label=False)
    assert "confusion_matrix" not in metrics and len(json.dumps(metrics)) < 2_000_000
    errors = sum(t != p for t, p in zip(truth, pred))
    assert sum(n for _, _, n in metrics["confusions"]) == errors  # under TOP_CONFUSIONS cells: all of them
    assert all(t != p for t, p, _ in metrics["confusions"])
    small = compute_metrics(truth[:50], pred[:50], labels[:DENSE_CONFUSION], multi_label=False)
    assert len(small["confusion_matrix"]) == DENSE_CONFUSION  # a matrix that fits a page is kept whole


def test_result_columns_for_thousands_of_labels_warn_nothing():
    labels = [f"l{i}" for i in range(2000)]
    preds = [Prediction(labels[i], 0.5, {name: 1 / 2000 for name in labels}, 10) for i in range(3)]
    chunk = pd.DataFrame({"text": ["a", "b", "c"], "score": [1, 2, 3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = result_columns(chunk, preds, labels, 3)
    assert list(out.columns[:5]) == ["text", "input_score", "predicted_label", "score", "prob_l0"]
    assert out["score"].tolist() == [0.5] * 3 and out.shape == (3, 2 + 2 + 2000 + 6 + 2)
    assert out["input_score"].tolist() == [1, 2, 3]  # an input column named like an output one is kept, renamed
    assert list(out.columns[2:]) == output_columns(labels, 3)  # the names classify warns about are those it adds


def test_the_ngram_stage_reads_less_text_in_its_time_when_there_are_thousands_of_labels(monkeypatch):
    """liblinear fits one SVM a class: the sample the n-grams read in their share of the budget shrinks with
    the classes, so a 1-minute budget holds with 10,000 labels (it ran 5 minutes past)."""
    from pipelines.data.labels import LabelSet
    from pipelines.training import fusion_stage

    seen = {}

    def fake_fit(texts, targets, *, multi_label, n_labels, chars, limit):
        seen[n_labels] = limit
        return None

    monkeypatch.setattr(fusion_stage, "fit_ngram", fake_fit)
    for n in (5, 10_000):
        names = [f"l{i}" for i in range(n)]
        fusion_stage.fit_parts(["a text"], ["l0"], [], [], LabelSet(names), seconds=15.0)
    assert seen[5] == 3_750_000  # 15 s / 1.2 at 0.3M characters a second
    assert seen[10_000] * 100 < seen[5]
    cost = fusion_stage.seconds_per_char(10_000)
    assert seen[10_000] * cost <= 15.0 / 1.2
