"""Give a trained model directory its n-gram component (or a new one), without retraining the encoder.

`fuse_ngrams` is the stage `txl train` ends with (`--ngrams fuse`, the default); `txl fuse` runs it alone,
for a model trained with `--ngrams off` or before n-grams existed. It carves the validation split `txl train`
carved (the same stratified 10% for the same --seed) unless --valid is given, fits TF-IDF + a linear SVM on
the rest, fits the fusion weights on the validation split (`pipelines/model/ngrams.py`), then refits the n-grams on
both splits: the weights are fit on held-out scores, and the model kept reads every labelled document. Test
figures measured before are kept as the encoder's alone.
"""
from __future__ import annotations

import argparse

from pipelines.data.labeled_texts import columns_of, load_split, load_train_valid
from pipelines.data.labels import LabelSet
from pipelines.errors import UserError
from pipelines.model.inference import prepare
from pipelines.model.model_dir import load_model_dir, save_model_dir
from pipelines.runtime.device import PRECISIONS
from pipelines.training.fusion_stage import (
    features,
    fit_phrase,
    fuse_ngrams,
    measure_test,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory written by `txl train`; updated in place")
    p.add_argument("--train", required=True, help="the labelled file the model was trained on")
    p.add_argument("--valid", help="validation file (default: the stratified 10%% of --train that `txl train` carved)")
    p.add_argument("--test", help="test file: the fused model and each part measured on it, into the card")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split-column", default="split", help="column naming each row's split, when the file has one")
    p.add_argument("--seed", type=int, default=0, help="the --seed of the `txl train` run (it chose the split)")
    p.add_argument("--ngrams", choices=("fuse", "words"), default="fuse",
                   help="fuse (default): word 1-2-grams and character 2-5-grams; words: word n-grams only")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="of the encoder's validation pass")
    p.add_argument("--device", default="auto")


def _card_section(metrics: dict, n_train: int, n_valid: int) -> str:
    f = metrics["fusion"]
    read, weights = fit_phrase(f, n_train, n_valid)
    rows = [f"| {k.replace('_', ', ').replace('encoder', 'encoder alone').replace('ngram', 'n-grams alone')} | "
            f"{m['n_documents']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['micro_f1']:.4f} |"
            for k, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    return "\n".join(["", "## N-gram component (`txl fuse`)", "",
                      f"Fused with {features(f)} fit on {read}: logits = "
                      f"{f['a']:.3g} x encoder log-probabilities + {f['b']:.3g} x n-gram scores, {weights}.", "",
                      "| split | documents | accuracy | macro-F1 | micro-F1 |", "|---|---:|---:|---:|---:|", *rows, ""])


def run(args: argparse.Namespace) -> int:
    md = load_model_dir(args.model)
    texts, labels, vtexts, vlabels = load_train_valid(args.train, args.valid, columns=columns_of(args), seed=args.seed)
    data_labels = LabelSet.from_labels(labels)
    if data_labels.names != md.labels or data_labels.multi_label != md.multi_label:
        raise UserError(f"{args.train} has the labels {data_labels.names[:5]}, the model {md.labels[:5]}; pass the "
                        "file the model was trained on")
    prepare(md, precision=args.precision, device=args.device, keep_weights=True)  # the weights are saved again
    fused = fuse_ngrams(md, texts, labels, vtexts, vlabels, chars=args.ngrams == "fuse")
    if md.ngram is None:
        raise UserError(f"{args.train}: the texts hold no word of two or more letters, so there are no n-grams to "
                        "fuse; the model is left as it was")
    old = {k: v for k, v in md.metrics.items() if not k.startswith(("validation", "test", "fusion"))}
    tested = {"test_encoder": md.metrics["test"]} if "test" in md.metrics else {}
    if args.test:
        tested = measure_test(md, *load_split(args.test, columns_of(args), "test"))
    md.metrics = {**old, **fused, **tested}
    md.card = (md.card.split("\n## N-gram component")[0].rstrip("\n") + "\n"
               + _card_section(md.metrics, len(texts), len(vtexts)))
    save_model_dir(md.path, md)
    for split in ("validation", "test"):
        if split in md.metrics:
            m = md.metrics
            print(f"txl fuse: {md.path}: {split} accuracy fused {m[split]['accuracy']:.4f}, encoder alone "
                  f"{m[split + '_encoder']['accuracy']:.4f}, n-grams alone {m[split + '_ngram']['accuracy']:.4f}")
    return 0
