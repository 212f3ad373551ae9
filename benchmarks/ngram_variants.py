"""Which n-gram component fuses best with a trained encoder: the default against variants, on one data set.

    python -m benchmarks.ngram_variants --model runs/accuracy/imdb.minilm-1epoch \\
        --train ../shared/data/imdb/train.csv.xz --test ../shared/data/imdb/test.csv.xz \\
        [--predictions runs/accuracy/imdb.minilm-1epoch.eval/predictions.csv] [--variants default nb ...]

Carves the validation split `txl train` carved (seed 0), reads the encoder's log-probabilities on it (and on the
test split), then for each variant fits the n-grams on the training split, the fusion weights on the validation
split (`pipelines.model.fusion.fit_fusion`, as `txl train` does) and prints validation and test accuracy of the
n-grams alone and fused. With --predictions (a single-label `txl evaluate` output of the fused model) the
test log-probabilities of the encoder are recovered from the fused probabilities, the saved fusion weights and
the saved n-gram scores, instead of running the encoder over the test split again.

Variants: `default` (TF-IDF 1-2-grams, sublinear tf, LinearSVC C=1: `pipelines.model.ngrams`), `trigram` (1-3-grams),
`nb` (each class's one-vs-rest SVM on the TF-IDF features scaled by that class's naive-Bayes log-count ratio,
Wang & Manning 2012), `nb-trigram`, `c-tuned` (C from 0.1, 0.3, 1, 3 by validation accuracy), `refit-all` (the default, its fusion
weights fit on the validation split as usual, then its n-grams fit again on training + validation for the test
figures: the validation columns are the default's).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.data.labeled_texts import Columns, load_split, load_train_valid
from pipelines.model.fusion import fit_fusion, fused_logits
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir
from pipelines.model.ngrams import NgramModel


def tfidf(texts, ngram_max: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, ngram_max), sublinear_tf=True, min_df=2, max_features=1_000_000,
                          dtype=np.float32)
    return vec, vec.fit_transform(texts)


def svm_scores(x, y, xs, n_labels: int, C: float = 1.0, nb: bool = False) -> list[np.ndarray]:
    """Decision values (N, L) on each matrix of `xs`."""
    from sklearn.svm import LinearSVC

    if not nb:
        svm = LinearSVC(C=C, random_state=0).fit(x, y)
        out = [svm.decision_function(m) for m in xs]
        return [np.stack([-s / 2, s / 2], 1) if s.ndim == 1 else s for s in out]
    cols = [[] for _ in xs]
    for k in range(n_labels if n_labels > 2 else 1):
        pos = (y == (k if n_labels > 2 else 1))
        p = np.asarray(x[pos].sum(0)).ravel() + 1.0
        q = np.asarray(x[~pos].sum(0)).ravel() + 1.0
        r = np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)
        svm = LinearSVC(C=C, random_state=0).fit(x.multiply(r).tocsr(), pos.astype(int))
        for j, m in enumerate(xs):
            cols[j].append(svm.decision_function(m.multiply(r).tocsr()))
    out = [np.stack(c, 1) for c in cols]
    return [np.concatenate([-s / 2, s / 2], 1) if n_labels == 2 else s for s in out]


def encoder_logprobs(md, texts) -> torch.Tensor:
    md.ngram = None
    return torch.log(torch.tensor([[p.probs[n] for n in md.labels] for p in predict(md, texts)]).clamp_min(1e-7))


def from_predictions(path: Path, md, ngram: NgramModel, texts) -> torch.Tensor:
    """The encoder's log-probabilities behind a fused single-label prediction file: fused logits minus the
    n-gram part, over a; known up to a per-row constant, which log_softmax removes."""
    import pandas as pd

    frame = pd.read_csv(path)
    fused = torch.log(torch.tensor(frame[[f"prob_{n}" for n in md.labels]].to_numpy(), dtype=torch.float64))
    scores = torch.as_tensor(ngram.scores(texts), dtype=torch.float64)
    return torch.log_softmax((fused - ngram.fusion["b"] * scores) / ngram.fusion["a"], -1).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--predictions", type=Path)
    p.add_argument("--variants", nargs="+", default=["default", "trigram", "nb", "nb-trigram", "c-tuned"])
    args = p.parse_args()
    texts, labels, vtexts, vlabels = load_train_valid(args.train, None, columns=Columns(), seed=0)
    ttexts, tlabels = load_split(args.test, Columns(), "test")
    md = load_model_dir(args.model)
    saved = md.ngram
    prepare(md, precision="auto", device="cpu")
    names = md.labels
    y, yv, yt = (np.array([names.index(v) for v in ls]) for ls in (labels, vlabels, tlabels))
    started = time.perf_counter()
    enc_v = encoder_logprobs(md, vtexts)
    enc_t = from_predictions(args.predictions, md, saved, ttexts) if args.predictions else encoder_logprobs(md, ttexts)
    print(f"encoder: validation {(enc_v.argmax(1).numpy() == yv).mean():.4f}, test "
          f"{(enc_t.argmax(1).numpy() == yt).mean():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    mats = {}
    print("| variant | validation n-grams | validation fused | test n-grams | test fused | a | b | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants:
        started = time.perf_counter()
        n = 3 if "trigram" in variant else 2
        if n not in mats:
            vec, x = tfidf(texts, n)
            mats[n] = (x, vec.transform(vtexts), vec.transform(ttexts))
        x, xv, xt = mats[n]
        if variant == "c-tuned":
            best = max((0.1, 0.3, 1.0, 3.0), key=lambda C: (svm_scores(x, y, [xv], len(names), C)[0].argmax(1)
                                                          == yv).mean())
            sv, st = svm_scores(x, y, [xv, xt], len(names), best)
        else:
            sv, st = svm_scores(x, y, [xv, xt], len(names), nb=variant.startswith("nb"))
        w = fit_fusion(enc_v, sv, torch.as_tensor(yv), multi_label=False)
        if variant == "refit-all":  # the default's fusion weights; its n-grams fit again on training + validation
            vec_all, x_all = tfidf(texts + vtexts, 2)
            st = svm_scores(x_all, np.concatenate([y, yv]), [vec_all.transform(ttexts)], len(names))[0]
        fuse = lambda e, s: fused_logits(e, torch.as_tensor(s, dtype=torch.float32), a=w["a"], b=w["b"],  # noqa: E731
                                         multi_label=False).argmax(1).numpy()
        print(f"| {variant} | {(sv.argmax(1) == yv).mean():.4f} | {(fuse(enc_v, sv) == yv).mean():.4f} | "
              f"{(st.argmax(1) == yt).mean():.4f} | {(fuse(enc_t, st) == yt).mean():.4f} | {w['a']:.3g} | "
              f"{w['b']:.3g} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
