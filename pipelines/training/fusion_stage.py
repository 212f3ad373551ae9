"""The stage `txl train` ends with and `txl fuse` runs alone: the n-gram part fit beside a trained encoder, its
fusion weights fit on the validation split, then the n-grams fit again on both splits; and the test split
measured on the fused model and on each part."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from pipelines.data.labels import LabelSet
from pipelines.model import ngrams as ngram_module
from pipelines.model.fusion import fit_fusion
from pipelines.model.inference import predict
from pipelines.model.metrics import compute_metrics, decide, tune_thresholds
from pipelines.model.model_dir import ModelDir
from pipelines.model.ngrams import fit_ngram
from pipelines.runtime import distributed as dist


def measure_test(best: ModelDir, texts: list[str], labels: list[str]) -> dict:
    """Test metrics of the model (each rank a shard), and of each part alone when it has n-grams."""
    preds = dist.map_sharded(lambda part: [(p.label, p.encoder_label, p.ngram_label) for p in predict(best, part)],
                             texts)
    parts = ("test", "test_encoder", "test_ngram") if best.ngram is not None else ("test",)
    return {part: compute_metrics(labels, [p[k] for p in preds], best.labels, multi_label=best.multi_label)
            for k, part in enumerate(parts)}


def encoder_scores(md: ModelDir, texts: list[str]) -> torch.Tensor:
    """What the fusion reads of the encoder alone (`md.ngram` None): log-probabilities (N, L), or logits when
    multi-label; each rank a shard."""
    probs = torch.tensor(dist.map_sharded(lambda part: [[p.probs[n] for n in md.labels]
                                                        for p in predict(md, part)], texts))  # (N, L)
    probs = probs.clamp(1e-7, 1 - 1e-7).double()
    return (torch.log(probs) - torch.log1p(-probs) if md.multi_label else torch.log(probs)).float()


def fuse_ngrams(best: ModelDir, texts: list[str], labels: list[str], vtexts: list[str], vlabels: list[str],
                refit: bool = True, chars: bool = True) -> dict:
    """Fit the n-gram component on the training split and its fusion weights (and multi-label thresholds) on
    the validation split (`pipelines/model/ngrams.py`), then, with `refit`, fit the n-grams again on both splits under
    those weights (the validation split is 10% more data for the SVM; benchmarks/ngram_refit.py measures the
    two fits on one model). Returns the validation metrics of the fused model and of each
    part, measured before the refit (held out)."""
    best.ngram = None  # the encoder's own probabilities below, also when refitting a fused model
    started = time.perf_counter()
    label_set = LabelSet(best.labels, best.multi_label)
    fit = lambda t, y: fit_ngram(t, np.asarray(label_set.encode(y)), multi_label=best.multi_label,  # noqa: E731
                                 n_labels=len(best.labels), chars=chars)
    ngram = fit(texts, labels)
    if ngram is None:
        if dist.is_main():
            tqdm.write("txl: no n-grams fused: the training texts hold no word of two or more letters")
        return {"validation": best.metrics.get("validation", {})}
    encoder = encoder_scores(best, vtexts)
    scores = ngram.scores(vtexts)
    truth = torch.as_tensor(label_set.encode(vlabels))
    ngram.fusion = fit_fusion(encoder, scores, truth, multi_label=best.multi_label)
    fused = torch.sigmoid(ngram.fuse(encoder, scores)) if best.multi_label else ngram.fuse(encoder, scores)
    if best.multi_label:
        ngram.thresholds = tune_thresholds(fused.numpy(), truth.numpy())
    decide_all = lambda p, th: ["|".join(n for n, c in zip(best.labels, row) if c) for row in decide(p, th)] \
        if best.multi_label else [best.labels[i] for i in p.argmax(1)]  # noqa: E731
    parts = {"validation": decide_all(fused.numpy(), ngram.thresholds),
             "validation_encoder": decide_all(torch.sigmoid(encoder).numpy() if best.multi_label else encoder.numpy(),
                                              best.model.config.thresholds),
             "validation_ngram": decide_all(torch.sigmoid(torch.as_tensor(scores)).numpy() if best.multi_label
                                            else scores, None)}
    out = {k: compute_metrics(vlabels, v, best.labels, multi_label=best.multi_label) for k, v in parts.items()}
    n_fit = len(texts)
    if refit:
        final = fit(texts + vtexts, labels + vlabels)
        final.fusion, final.thresholds, n_fit = ngram.fusion, ngram.thresholds, n_fit + len(vtexts)
        ngram = final
    best.ngram = ngram
    out["fusion"] = dict(ngram.fusion, n_terms=len(ngram.terms), n_word_terms=ngram.n_word_terms,
                         fit_documents=ngram.fit_documents, fit_on=SPLITS[refit])
    if dist.is_main() and ngram.fit_documents < n_fit:
        tqdm.write(f"txl: the n-grams were fit on a random {ngram.fit_documents:,} of the {n_fit:,} documents of the "
                   f"{SPLITS[refit]}, about {ngram_module.fit_limit(chars) / 1e6:g}M characters (the fit's memory "
                   "grows with the text it reads)")
    if dist.is_main():
        tqdm.write(f"n-grams fused in {time.perf_counter() - started:.0f} s (a {ngram.fusion['a']:.3g}, "
                   f"b {ngram.fusion['b']:.3g}): validation "
                   + ", ".join(f"{k.replace('validation', 'fused').replace('fused_', '')} {v['accuracy']:.4f}"
                               for k, v in out.items() if "accuracy" in v))
    return out


SPLITS = {False: "training split", True: "training and validation splits"}  # what the n-grams kept were fit on


def features(fusion: dict) -> str:
    """What the card calls the n-gram part, from its metrics (models fused before 2026-12-04, late: words only)."""
    n, words = fusion["n_terms"], fusion.get("n_word_terms", fusion["n_terms"])
    if words == n:
        return f"a TF-IDF 1-2-gram linear SVM ({n:,} terms)"
    return f"a linear SVM over TF-IDF word 1-2-grams ({words:,}) and character 2-5-grams ({n - words:,})"


def fit_phrase(fusion: dict, n_train: int, n_valid: int) -> tuple[str, str]:
    """What the card says the n-grams were fit on, and their fusion weights."""
    splits = fusion.get("fit_on", SPLITS[False])  # models fused before 2026-12-04: the training split
    refit = splits == SPLITS[True]
    n, n_fit = fusion.get("fit_documents"), n_train + n_valid if refit else n_train
    read = f"the {splits}" if n is None or n == n_fit else f"a random {n:,} documents of the {splits}"
    prior = (f", under a prior toward each part's own calibration (b / a {fusion['prior_ratio']:.3g})"
             if "prior_ratio" in fusion else "")  # models fused before the evening of 2026-12-04: a plain log-loss fit
    return read, "weights fit on the validation split" + (" (scored by n-grams fit on the training split alone)"
                                                           if refit else "") + prior
