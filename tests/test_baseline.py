"""The TF-IDF + LinearSVC baseline on tiny separable data made here, single- and multi-label, through `txl`."""
from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.commands.baseline import fit_predict

TOPICS = {"sport": "goal match team coach league", "tech": "chip code cloud robot data",
          "food": "bread spice soup oven recipe"}
FILLER = "the a of and to in is was for on".split()


def corpus(n: int, *, seed: int, multi: bool = False) -> pd.DataFrame:
    """Documents of filler words plus words of their topic(s); every 3rd one has two topics when `multi`."""
    rng, names, rows = random.Random(seed), sorted(TOPICS), []
    for i in range(n):
        labels = sorted({names[i % 3], *([names[(i + 1) % 3]] if multi and i % 3 == 0 else [])})
        words = [rng.choice(FILLER) for _ in range(12)]
        words += [rng.choice(TOPICS[name].split()) for name in labels for _ in range(4)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(labels)})
    return pd.DataFrame(rows)


def test_separable_topics_are_learned():
    train, test = corpus(60, seed=0), corpus(30, seed=1)
    predicted = fit_predict(train["text"].tolist(), train["label"].tolist(), test["text"].tolist())
    assert (pd.Series(predicted) == test["label"]).mean() >= 0.95


def test_multi_label_predicts_label_sets():
    train, test = corpus(90, seed=0, multi=True), corpus(30, seed=1, multi=True)
    predicted = fit_predict(train["text"].tolist(), train["label"].tolist(), test["text"].tolist())
    assert sum("|" in p for p in predicted) >= 5  # two-topic documents get two labels
    assert (pd.Series(predicted) == test["label"]).mean() >= 0.8  # the whole set must match


def test_cli_writes_metrics(tmp_path, capsys):
    corpus(60, seed=0).to_csv(tmp_path / "train.csv", index=False)
    corpus(30, seed=1).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    out = tmp_path / "m" / "metrics.json"
    assert main(["baseline", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.jsonl"),
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] >= 0.95 and metrics["n_documents"] == 30 and metrics["n_train"] == 60
    assert {"macro_f1", "micro_f1", "per_class"} <= set(metrics)
    assert "accuracy" in capsys.readouterr().out


def test_one_file_with_a_split_column_serves_both(tmp_path, capsys):
    frame = pd.concat([corpus(60, seed=0, multi=True).assign(split="train"),
                       corpus(30, seed=1, multi=True).assign(split="test")])
    frame.to_parquet(tmp_path / "all.parquet")
    out = tmp_path / "metrics.json"
    path = str(tmp_path / "all.parquet")
    assert main(["baseline", "--train", path, "--test", path, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_documents"] == 30 and metrics["micro_f1"] >= 0.9


@pytest.mark.parametrize("split_column", [False, True])
def test_the_same_rows_for_train_and_test_are_refused(tmp_path, capsys, split_column):
    frame = corpus(30, seed=0).assign(split="train") if split_column else corpus(30, seed=0)
    frame.to_csv(tmp_path / "all.csv", index=False)
    path = str(tmp_path / "all.csv")
    extra = ["--test-split", "train"] if split_column else []
    assert main(["baseline", "--train", path, "--test", path, *extra]) == 2
    assert "test rows would be training rows" in capsys.readouterr().err


def test_a_single_class_is_refused(tmp_path, capsys):
    pd.DataFrame({"text": ["a b c", "b c d"], "label": ["x", "x"]}).to_csv(tmp_path / "one.csv", index=False)
    corpus(9, seed=0).to_csv(tmp_path / "test.csv", index=False)
    assert main(["baseline", "--train", str(tmp_path / "one.csv"), "--test", str(tmp_path / "test.csv")]) == 2
    assert "single class" in capsys.readouterr().err
