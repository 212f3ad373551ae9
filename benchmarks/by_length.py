"""Accuracy by document length: a model's test predictions (`txl evaluate`'s predictions.csv) against the
TF-IDF + LinearSVC baseline's on the same documents, in length quartiles, to see where reading whole
documents helps and where the baseline's n-grams win.

    python -m benchmarks.by_length --dataset imdb --predictions runs/accuracy/imdb.minilm.eval/predictions.csv \\
        [--model runs/accuracy/imdb.minilm]

The baseline is fitted on the data set's whole training split (as in `benchmarks/accuracy.py`). Lengths are
whitespace-separated words in quartiles, or with `--model` the number of segments the model reads (its
tokenizer and segment length): one, two, three or more. Single-label data sets only. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from benchmarks.accuracy import DATASETS
from pipelines.commands.baseline import fit_predict
from pipelines.data.bpe_tokenizer import encode_batch
from pipelines.data.labeled_texts import load_labeled
from pipelines.data.word_tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--predictions", type=Path, required=True, help="predictions.csv written by `txl evaluate`")
    p.add_argument("--buckets", type=int, default=4, help="word-length quantiles (without --model)")
    p.add_argument("--model", type=Path, help="the model directory: bucket by segments read instead")
    args = p.parse_args(argv)
    train_file, test_file = (str(args.data / f) for f in DATASETS[args.dataset])
    texts, labels = load_labeled(train_file, text_column="text", label_column="label", split_column="split",
                                 split="train")
    test_texts, test_labels = load_labeled(test_file, text_column="text", label_column="label",
                                           split_column="split", split="test")
    model = pd.read_csv(args.predictions, dtype=str, keep_default_na=False)
    if model["text"].tolist() != test_texts:
        raise SystemExit("the predictions are not of this data set's test split, in its order")
    frame = pd.DataFrame({"words": [len(t.split()) for t in test_texts],
                          "model": model["predicted_label"].to_numpy() == pd.Series(test_labels).to_numpy(),
                          "baseline": pd.Series(fit_predict(texts, labels, test_texts)).to_numpy()
                          == pd.Series(test_labels).to_numpy()})
    if args.model:
        segment = json.loads((args.model / "config.json").read_text())["segment_len"]
        tokens = [len(ids) for ids in encode_batch(load_tokenizer(args.model / "tokenizer.json"), test_texts)]
        frame["bucket"] = pd.cut([-(-n // segment) for n in tokens], [0, 1, 2, 10 ** 9])
        names = {0: "1 segment", 1: "2 segments", 2: "3 or more"}
    else:
        frame["bucket"] = pd.qcut(frame["words"], args.buckets, duplicates="drop")
        names = {i: f"{int(b.left) + 1:,}-{int(b.right):,} words" for i, b in enumerate(frame["bucket"].cat.categories)}
    print(f"{args.dataset}: {len(frame):,} test documents, model {100 * frame['model'].mean():.2f}, "
          f"baseline {100 * frame['baseline'].mean():.2f}\n")
    print("| length | documents | model accuracy | baseline accuracy | difference |")
    print("|---|---:|---:|---:|---:|")
    for code, part in frame.groupby(frame["bucket"].cat.codes):
        model_acc, base_acc = 100 * part["model"].mean(), 100 * part["baseline"].mean()
        print(f"| {names[code]} | {len(part):,} | {model_acc:.2f} | {base_acc:.2f} | {model_acc - base_acc:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
