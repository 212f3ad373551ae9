"""The stage `txl train` ends with and `txl fuse` runs alone: the n-gram part fit beside a trained encoder, its
fusion weights fit on the validation split, then the n-grams fit again on both splits; and the test split
measured on the fused model and on each part."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from pipelines.data.labels import LabelSet
from pipelines.model import ngrams as ngram_module
from pipelines.model.fusion import calibrate, fit_fusion
from pipelines.model.inference import predict
from pipelines.model.metrics import compute_metrics, decided_labels, tune_thresholds
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
    if best.multi_label:
        fused = torch.sigmoid(ngram.fuse(encoder, scores))
        ngram.thresholds = tune_thresholds(fused.numpy(), truth.numpy())
    out = _validation(best, ngram, encoder, scores, vlabels)
    kept = _better_part(out, multi_label=best.multi_label)
    if kept != "fused":  # fusion never makes a model worse on validation than its better part alone
        ngram.fusion = dict(ngram.fusion, **_one_part(kept, scores, truth, multi_label=best.multi_label), kept=kept)
        ngram.thresholds = best.model.config.thresholds if kept == "encoder" else None
        out["validation"] = out[f"validation_{kept}"]
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


def _one_part(kept: str, scores, truth: torch.Tensor, *, multi_label: bool) -> dict:
    """Fusion weights that reproduce one part alone: the encoder's probabilities, or the n-gram scores (at
    their own calibrated temperature when single-label, so that the probabilities mean something)."""
    if kept == "encoder":
        return {"a": 1.0, "b": 0.0, "c": 0.0}
    if multi_label:  # the decisions measured for the n-grams alone: sigmoid(scores) at 0.5
        return {"a": 0.0, "b": 1.0, "c": 0.0}
    log_t, _ = calibrate(torch.as_tensor(scores).float(), truth, multi_label=False)
    return {"a": 0.0, "b": round(math.exp(log_t), 6), "c": 0.0}


def _validation(best: ModelDir, ngram, encoder: torch.Tensor, scores, vlabels: list[str]) -> dict:
    """Validation metrics of the fused model and of each part alone."""
    fused = ngram.fuse(encoder, scores)
    if best.multi_label:
        def decide_all(p, th):
            return decided_labels(p, best.labels, th)
        parts = {"validation": decide_all(torch.sigmoid(fused).numpy(), ngram.thresholds),
                 "validation_encoder": decide_all(torch.sigmoid(encoder).numpy(), best.model.config.thresholds),
                 "validation_ngram": decide_all(torch.sigmoid(torch.as_tensor(scores)).numpy(), None)}
    else:
        parts = {"validation": fused.numpy(), "validation_encoder": encoder.numpy(), "validation_ngram": scores}
        parts = {k: [best.labels[i] for i in v.argmax(1)] for k, v in parts.items()}
    return {k: compute_metrics(vlabels, v, best.labels, multi_label=best.multi_label) for k, v in parts.items()}


def _better_part(out: dict, *, multi_label: bool) -> str:
    """`fused`, unless one part alone scores higher on validation (accuracy; micro-F1 when multi-label)."""
    key = "micro_f1" if multi_label else "accuracy"
    best = max(("fused", "ngram", "encoder"), key=lambda k: (out["validation" + ("" if k == "fused" else "_" + k)][key],
                                                              k == "fused"))
    return best


def features(fusion: dict) -> str:
    """What the card calls the n-gram part, from its metrics (words only when it has no character n-grams)."""
    n, words = fusion["n_terms"], fusion.get("n_word_terms", fusion["n_terms"])
    if words == n:
        return f"a TF-IDF 1-2-gram linear SVM ({n:,} terms)"
    return f"a linear SVM over TF-IDF word 1-2-grams ({words:,}) and character 2-5-grams ({n - words:,})"


def fit_phrase(fusion: dict, n_train: int, n_valid: int) -> tuple[str, str]:
    """What the card says the n-grams were fit on, and their fusion weights."""
    splits = fusion.get("fit_on", SPLITS[False])  # older model files: the training split
    refit = splits == SPLITS[True]
    n, n_fit = fusion.get("fit_documents"), n_train + n_valid if refit else n_train
    read = f"the {splits}" if n is None or n == n_fit else f"a random {n:,} documents of the {splits}"
    prior = (f", under a prior toward each part's own calibration (b / a {fusion['prior_ratio']:.3g})"
             if "prior_ratio" in fusion else "")  # older model files: a plain log-loss fit
    kept = {"encoder": "; the encoder alone scored higher on validation than the fusion, so it is used alone",
            "ngram": "; the n-grams alone scored higher on validation than the fusion, so they are used alone"}
    return read, "weights fit on the validation split" + (" (scored by n-grams fit on the training split alone)"
                                                           if refit else "") + prior + kept.get(fusion.get("kept"), "")
