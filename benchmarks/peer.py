"""The peer a user could build instead of the recipe: frozen all-MiniLM-L6-v2 embeddings of 256-token chunks,
averaged over the document, stacked beside TF-IDF in one linear SVM (and a logistic regression on the
embeddings alone), on a long-document set, with the reading the recipe's `--mem-len 0` run did.

    python -m benchmarks.peer --dataset ungdc [--run runs/long_docs/ungdc.mem0]

all-MiniLM-L6-v2 reading 256-token chunks independently is the recipe's start with `--mem-len 0`: the
relative-position weights of the converted encoder start at zero, and its pooling is the mean over every token.
So the training documents' vectors are those the mem0 run cached (the random sample it read in its budget, with
the validation documents it read); the test documents are read here with the same encoder (the start's weights,
when the run fine-tuned after reading). The peer's models
are fit on the documents read (train and validation: the peer needs no validation split):
  embeddings   a logistic regression on the standardised mean-pooled embeddings
  stacked      one LinearSVC over [TF-IDF word 1-2-grams (`txl baseline`'s features) | L2-normalised
               embeddings], the embedding block at a fixed weight of 1 (each block has unit norm)
Each result is appended to benchmarks/long_docs.json as the variants `peer_embeddings` and `peer_stacked`, and
the table in RESULTS.md is rewritten (benchmarks/long_docs.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from benchmarks.long_docs import FILES, HERE, SAMPLES, record, result_row, sample_set
from pipelines.data import token_ids
from pipelines.data.labeled_texts import Columns, load_split, load_train_valid
from pipelines.model.inference import pooled_features, prepare
from pipelines.model.metrics import compute_metrics
from pipelines.model.model_dir import load_model_dir
from pipelines.model.ngrams import _settings
from pipelines.training.starts import load_start


def cached(folder: Path) -> dict[int, np.ndarray]:
    """{document index: pooled vector} of the chunks a frozen-stage reading left in `folder`."""
    out: dict[int, np.ndarray] = {}
    for path in sorted(folder.glob("chunk-*.safetensors")):
        saved = load_file(str(path))
        out.update(zip(saved["index"].tolist(), saved["features"]))
    return out


def read_run(run: Path, data: Path):
    """The documents the mem0 run read (texts, labels, vectors), rebuilt as `txl train` split them (seed 0)."""
    texts, labels, vtexts, vlabels = load_train_valid(str(data), None, columns=Columns(), seed=0)
    md = load_model_dir(run)
    ids = [e.ids for e in token_ids.encode(md.tokenizer, texts)]
    keep = [i for i, x in enumerate(ids) if len(x)]
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    features = run / "checkpoint" / "features"
    keys = [p for p in features.iterdir() if p.is_dir()] if features.is_dir() else []
    if len(keys) != 1:
        sys.exit(f"{features}: expected the cache of one reading, found {len(keys)}; rerun the mem0 variant")
    train = cached(keys[0] / "train")
    valid = {}
    for folder in keys[0].glob("valid-*"):
        valid.update(cached(folder))
    rows = [(texts[i], labels[i], v) for i, v in sorted(train.items())]
    rows += [(vtexts[i], vlabels[i], v) for i, v in sorted(valid.items())]
    return md, [r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted([*FILES, *SAMPLES]), required=True)
    p.add_argument("--run", type=Path, help="the mem0 run's model directory (default runs/long_docs/<dataset>.mem0)")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = p.parse_args()
    runs = HERE.parent / "runs" / "long_docs"
    run = args.run or runs / f"{args.dataset}.mem0"
    source = sample_set(args.dataset, args.data, runs / f"{args.dataset}.csv") if args.dataset in SAMPLES else \
        args.data / FILES[args.dataset]
    started = time.time()
    md, texts, labels, x = read_run(run, source)
    if md.model.config.mem_len != 0:
        sys.exit(f"{run} was trained with --mem-len {md.model.config.mem_len}; the peer reads chunks independently")
    if md.metrics.get("training", {}).get("steps", 0):  # fine-tuned after reading: back to the frozen start
        md.model.transformer.load_state_dict(load_start("minilm", segment_len=md.model.config.segment_len).encoder)
    test_texts, test_labels = load_split(str(source), Columns(), "test")
    prepare(md, precision="auto")
    print(f"peer: {len(texts):,} documents read by the mem0 run; reading the {len(test_texts):,} test documents",
          flush=True)
    test_ids = [e.ids for e in token_ids.encode(md.tokenizer, test_texts)]
    test_x = pooled_features(md, test_ids)
    mean, std = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=1.0, max_iter=3000).fit((x - mean) / std, labels)
    vectorizer = TfidfVectorizer(**_settings(fit=True))  # `txl baseline`'s word 1-2-grams
    tfidf = vectorizer.fit_transform(texts)
    stack = lambda t, e: sp.hstack([t, sp.csr_matrix(normalize(e))], format="csr")  # noqa: E731
    svm = LinearSVC(C=1.0).fit(stack(tfidf, x), labels)
    predicted = {"peer_embeddings": lr.predict((test_x - mean) / std).tolist(),
                 "peer_stacked": svm.predict(stack(vectorizer.transform(test_texts), test_x)).tolist()}
    minutes = (time.time() - started) / 60
    for variant, guess in predicted.items():
        m = compute_metrics(test_labels, guess, sorted(set(labels) | set(test_labels)), multi_label=False)
        record(result_row(args.dataset, variant, minutes, m, f"python -m benchmarks.peer --dataset {args.dataset} "
                          f"(after the mem0 variant; {len(texts):,} training documents read)"))


if __name__ == "__main__":
    main()
