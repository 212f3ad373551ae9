"""The TF-IDF + LinearSVC baseline on the validation split that `txl train` carves from a training file (a
stratified 10%, seed 0), to set a model's validation accuracy against the baseline's on the same documents.

    python benchmarks/baseline_validation.py --datasets 20newsgroups [--data ../shared/data]

Prints one JSON line per data set: validation accuracy of the baseline trained on the other 90%.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.commands.baseline import fit_predict
from pipelines.data.labeled_texts import load_labeled
from pipelines.data.labels import stratified_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import DATASETS  # noqa: E402  (benchmarks/ is scripts, not a package)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--datasets", nargs="+", default=["20newsgroups"], choices=list(DATASETS))
    args = p.parse_args()
    for name in args.datasets:
        texts, labels = load_labeled(str(args.data / DATASETS[name][0]), text_column="text", label_column="label",
                                     split_column="split", split="train")
        train, valid = stratified_split(labels, valid_fraction=0.1, seed=0)  # `txl train`'s carve, its default seed
        predicted = fit_predict([texts[i] for i in train], [labels[i] for i in train], [texts[i] for i in valid])
        right = sum(predicted[k] == labels[i] for k, i in enumerate(valid))
        print(json.dumps({"dataset": name, "n_valid": len(valid), "baseline_validation_accuracy": right / len(valid)}))


if __name__ == "__main__":
    main()
