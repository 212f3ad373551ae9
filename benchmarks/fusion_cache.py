"""Cache what a fusion fit reads, per trained model, so that fusion methods can be compared in seconds.

    python -m benchmarks.fusion_cache --data ../shared/data --runs runs/accuracy --out runs/fusion_cache \\
        [--models bbc_news bbc_news.seed1 r8 ...]

For each model directory `benchmarks.accuracy` wrote (`RUNS/NAME.RECIPE[.seedN]`) it stores in `OUT/MODEL.pt`:
the encoder's scores (what `pipelines.training.fusion_stage.encoder_scores` gives: log-probabilities, logits when
multi-label) on the validation split `txl train` carved for that seed and on the test split; the n-gram scores (the
product's `fit_ngram`) of the training split's fit on validation and test and of the training + validation fit on
test; the labels. The encoder's test pass is the slow part (imdb: about 11 minutes on 2 cores). `python -m
benchmarks.fusion_variants` reads the cache.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.accuracy import DATASETS, DEFAULT
from pipelines.data.labeled_texts import Columns, load_split, load_train_valid
from pipelines.data.labels import LabelSet
from pipelines.model.inference import prepare
from pipelines.model.model_dir import load_model_dir
from pipelines.model.ngrams import fit_ngram
from pipelines.training.fusion_stage import encoder_scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", nargs="+", help="NAME or NAME.seedN (default: every model of --recipe in --runs)")
    ap.add_argument("--recipe", default=DEFAULT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models or sorted(p.name.replace(f".{args.recipe}", "") for p in args.runs.glob(f"*.{args.recipe}*")
                                   if (p / "config.json").is_file())
    for model in models:
        name, _, seed = model.partition(".seed")
        target = args.out / f"{model}.pt"
        directory = args.runs / f"{name}.{args.recipe}" if not seed else args.runs / f"{name}.{args.recipe}.seed{seed}"
        if target.is_file() or not (directory / "config.json").is_file():
            print(f"{model}: {'cached' if target.is_file() else 'no model at ' + str(directory)}; skipped")
            continue
        started = time.time()
        train, test = (str(args.data / f) for f in DATASETS[name])
        texts, labels, vtexts, vlabels = load_train_valid(train, None, columns=Columns(), seed=int(seed or 0))
        ttexts, tlabels = load_split(test, Columns(), "test")
        md = prepare(load_model_dir(directory), precision="auto", device="cpu")
        md.ngram = None
        label_set = LabelSet(md.labels, md.multi_label)
        y, yv, yt = (np.asarray(label_set.encode(v)) for v in (labels, vlabels, tlabels))
        kw = dict(multi_label=md.multi_label, n_labels=len(md.labels))
        enc_v = encoder_scores(md, vtexts)
        enc_t = encoder_scores(md, ttexts)
        print(f"{model}: encoder on {len(vtexts):,} + {len(ttexts):,} documents in {time.time() - started:.0f} s",
              flush=True)
        on_train = fit_ngram(texts, y, **kw)
        on_all = fit_ngram(texts + vtexts, np.concatenate([y, yv]), **kw)
        cache = {"labels": md.labels, "multi_label": md.multi_label, "y": y, "yv": yv, "yt": yt,
                 "enc_v": enc_v, "enc_t": enc_t, "sv": on_train.scores(vtexts), "st": on_train.scores(ttexts),
                 "st_all": on_all.scores(ttexts),
                 "saved_fusion": load_model_dir(directory).ngram.fusion}
        torch.save(cache, target)
        print(f"{model}: cached in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
