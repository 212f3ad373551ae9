"""Test figures of a trained model's fusion with the n-grams fit on the training split alone vs refit on the
training and validation splits (`fuse_ngrams(refit=...)`, pipelines/training/fusion_stage.py), the encoder
unchanged.

    python -m benchmarks.ngram_refit --data ../shared/data --runs runs/accuracy --datasets bbc_news r8 \\
        [--recipe minilm-lr3e-5-fresh1e-4]

Reads the model directories `benchmarks.accuracy` wrote (`RUNS/NAME.RECIPE`) without changing them; the
validation split is the one `txl train` carved (seed 0). The encoder's test probabilities are computed once.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.accuracy import DATASETS, DEFAULT
from pipelines.data.labeled_texts import Columns, load_split, load_train_valid
from pipelines.model.inference import prepare
from pipelines.model.metrics import compute_metrics, decide
from pipelines.model.model_dir import load_model_dir
from pipelines.training.fusion_stage import encoder_scores, fuse_ngrams


def labels_of(md, fused: torch.Tensor, thresholds) -> list[str]:
    if md.multi_label:
        return ["|".join(n for n, c in zip(md.labels, row) if c) for row in decide(torch.sigmoid(fused).numpy(),
                                                                                   thresholds)]
    return [md.labels[i] for i in fused.argmax(1).tolist()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--recipe", default=DEFAULT)
    args = ap.parse_args()
    rows = []
    for name in args.datasets:
        model = args.runs / f"{name}.{args.recipe}"
        if not (model / "config.json").is_file():
            print(f"{name}: no model at {model}; skipped")
            continue
        train, test = (str(args.data / f) for f in DATASETS[name])
        data = load_train_valid(train, None, columns=Columns(), seed=0)
        ttexts, tlabels = load_split(test, Columns(), "test")
        md = prepare(load_model_dir(model), precision="auto", device="cpu")
        started = time.time()
        md.ngram = None  # the encoder alone
        enc = encoder_scores(md, ttexts)
        print(f"{name}: encoder on {len(ttexts):,} test documents in {time.time() - started:.0f} s")
        for refit in (False, True):
            fuse_ngrams(md, *data, refit=refit)
            scores = md.ngram.scores(ttexts)
            fused = md.ngram.fuse(enc, scores)
            alone = torch.as_tensor(scores)
            m = compute_metrics(tlabels, labels_of(md, fused, md.ngram.thresholds), md.labels,
                                multi_label=md.multi_label)
            n = compute_metrics(tlabels, labels_of(md, alone, None), md.labels, multi_label=md.multi_label)
            rows.append((name, "train + valid" if refit else "train", md.ngram.fit_documents, md.ngram.fusion, m, n))
    print("\n| data set | n-grams fit on | documents | a | b | fused accuracy | fused macro-F1 | fused micro-F1 | "
          "n-grams alone (acc / micro-F1) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, on, docs, f, m, n in rows:
        print(f"| {name} | {on} | {docs:,} | {f['a']:.3g} | {f['b']:.3g} | {100 * m['accuracy']:.2f} | "
              f"{100 * m['macro_f1']:.2f} | {100 * m['micro_f1']:.2f} | {100 * n['accuracy']:.2f} / "
              f"{100 * n['micro_f1']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
