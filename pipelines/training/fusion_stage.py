"""The n-gram part and its fusion with the encoder: `txl train` fits the n-grams first (`fit_parts`: on the
training split, scoring the validation split, then again on both splits) and fuses them with the best encoder at
the end (`fuse_parts`: weights fit on the validation split, from the validation scores training already has);
`txl fuse` runs both on a trained model (`fuse_ngrams`). And the test split measured on the fused model and on
each part."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from tqdm import tqdm

from pipelines.data.labels import LabelSet
from pipelines.model import ngrams as ngram_module
from pipelines.model.confidence import calibrate as calibrate_notice
from pipelines.model.fusion import calibrate, fit_fusion, fused_logits
from pipelines.model.inference import predict
from pipelines.model.metrics import compute_metrics, decided_labels, tune_thresholds
from pipelines.model.model_dir import ModelDir
from pipelines.model.ngrams import NgramModel, fit_ngram
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
    probs = dist.map_sharded(lambda part: [[p.probs[n] for n in md.labels] for p in predict(md, part)], texts)
    return scores_of(np.asarray(probs), multi_label=md.multi_label)


def scores_of(probs: np.ndarray, *, multi_label: bool) -> torch.Tensor:
    """The encoder's probabilities (N, L) as the fusion reads them (`encoder_scores`)."""
    probs = torch.as_tensor(probs).clamp(1e-7, 1 - 1e-7).double()
    return (torch.log(probs) - torch.log1p(-probs) if multi_label else torch.log(probs)).float()


@dataclass
class NgramParts:
    """The n-gram stage's output, fit before the encoder trains: the validation scores of the n-grams fit on the
    training split (what the fusion weights are fit against) and the n-grams kept (`final`: refit on both
    splits when `refit`)."""

    valid_scores: np.ndarray  # (N_valid, L)
    final: NgramModel
    n_fit: int  # the documents the kept fit was offered
    refit: bool
    seconds: float
    valid_coverage: np.ndarray | None = None  # (N_valid,) the share of known words (`NgramModel.coverage`)

    def subset(self, index: list[int]) -> NgramParts:
        """The same parts, the validation arrays kept for the documents `index` only."""
        coverage = None if self.valid_coverage is None else self.valid_coverage[index]
        return replace(self, valid_scores=self.valid_scores[index], valid_coverage=coverage)

    def files(self) -> dict[str, str | bytes]:
        """For the checkpoint folder: a resumed run skips the stage."""
        meta = {"n_fit": self.n_fit, "refit": self.refit, "seconds": self.seconds}
        return {**self.final.files(), PARTS_FILE: json.dumps(meta),
                SCORES_FILE: save_arrays(
                    {"valid_scores": self.valid_scores,
                     **({} if self.valid_coverage is None else {"valid_coverage": self.valid_coverage})})}

    @classmethod
    def load(cls, folder: Path) -> NgramParts | None:
        if not (folder / PARTS_FILE).is_file() or not (folder / SCORES_FILE).is_file():
            return None
        final = NgramModel.load(folder)
        if final is None:
            return None
        meta = json.loads((folder / PARTS_FILE).read_text())
        arrays = load_arrays((folder / SCORES_FILE).read_bytes())
        return cls(arrays["valid_scores"], final, int(meta["n_fit"]), bool(meta["refit"]), float(meta["seconds"]),
                   arrays.get("valid_coverage"))


PARTS_FILE, SCORES_FILE = "ngram_stage.json", "ngram_valid_scores.safetensors"


NGRAM_CHARS_PER_SECOND = 300_000  # one fit with character n-grams, scoring included (CPU-B: 0.29M/s, CPU-A 0.45M/s)
# liblinear fits one SVM a class: past 20 classes each costs about this much more per character (CPU-A, 2,000 bbc
# texts, 4.3M characters: 5 classes 21 s, 200 classes 104 s, measured beside a reading job, scaled to the rate above)
SECONDS_PER_CHAR_PER_LABEL = 6.5e-8


def seconds_per_char(n_labels: int) -> float:
    """The n-gram fit's cost per character of text for `n_labels` classes."""
    return 1 / NGRAM_CHARS_PER_SECOND + max(0, n_labels - 20) * SECONDS_PER_CHAR_PER_LABEL


def fit_parts(texts: list[str], labels: list[str], vtexts: list[str], vlabels: list[str], label_set: LabelSet, *,
              refit: bool = True, chars: bool = True, seconds: float | None = None) -> NgramParts | None:
    """Fit the n-grams on the training split and score the validation split with them; with `refit`, fit them
    again on both splits (the validation split is 10% more data for the SVM; benchmarks/ngram_refit.py measures
    the two fits), unless the first fit already read only a sample (a refit would read as much again) or took
    more than half of `seconds`. `seconds` (None: no limit) sizes the sample the fit reads. None when the
    training texts hold no word of two or more letters. Needs no encoder: `txl train` runs it first, so its
    time is measured, not guessed, before the rest of the budget is split."""
    started = time.perf_counter()
    cost = seconds_per_char(len(label_set.names))  # thousands of labels: a smaller sample in the same time
    limit = None if seconds is None else max(int(1_000_000 / NGRAM_CHARS_PER_SECOND / cost),
                                             int(seconds / 1.2 / cost))
    fit = lambda t, y: fit_ngram(t, np.asarray(label_set.encode(y)), multi_label=label_set.multi_label,  # noqa: E731
                                 n_labels=len(label_set.names), chars=chars, limit=limit)
    ngram = fit(texts, labels)
    if ngram is None:
        if dist.is_main():
            tqdm.write("txl: no n-grams fused: the training texts hold no word of two or more letters")
        return None
    scores, coverage = ngram.scores(vtexts), ngram.coverage(vtexts)  # by the fit that never saw them
    n_fit, took = len(texts), time.perf_counter() - started
    refit = refit and ngram.fit_documents == len(texts) and (seconds is None or 2.2 * took <= seconds)
    if refit:
        ngram, n_fit = fit(texts + vtexts, labels + vlabels), n_fit + len(vtexts)
    return NgramParts(scores, ngram, n_fit, refit, time.perf_counter() - started, coverage)


def fuse_ngrams(best: ModelDir, texts: list[str], labels: list[str], vtexts: list[str], vlabels: list[str],
                refit: bool = True, chars: bool = True) -> dict:
    """`txl fuse`: fit the n-gram parts (`fit_parts`), then fuse them with the encoder of `best`."""
    best.ngram = None  # the encoder's own probabilities below, also when refitting a fused model
    parts = fit_parts(texts, labels, vtexts, vlabels, LabelSet(best.labels, best.multi_label), refit=refit,
                      chars=chars)
    if parts is None:
        return {"validation": best.metrics.get("validation", {})}
    return fuse_parts(best, parts, encoder_scores(best, vtexts), vlabels)


def fuse_parts(best: ModelDir, parts: NgramParts, encoder: torch.Tensor, vlabels: list[str]) -> dict:
    """Fit the fusion weights (and multi-label thresholds) of the encoder of `best`, whose validation scores are
    `encoder` (`encoder_scores`), and the n-grams `parts` on the validation split; sets `best.ngram`. Returns the
    validation metrics of the fused model and of each part, the n-grams' measured by their fit on the training
    split alone (held out)."""
    ngram, scores = parts.final, parts.valid_scores
    truth = torch.as_tensor(LabelSet(best.labels, best.multi_label).encode(vlabels))
    ngram.fusion = fit_fusion(encoder, scores, truth, multi_label=best.multi_label)
    ngram.thresholds = None
    if best.multi_label:
        fused = torch.sigmoid(ngram.fuse(encoder, scores))
        ngram.thresholds = tune_thresholds(fused.numpy(), truth.numpy())
    out = _validation(best, ngram, encoder, scores, vlabels)
    kept = _better_part(out, multi_label=best.multi_label)
    if kept != "fused" and not best.multi_label:  # the mix nearest the fit that scores as high as that part
        shift = nearest_mix(ngram.fusion, encoder, scores, truth, floor=out[f"validation_{kept}"]["accuracy"])
        if shift is not None:
            ngram.fusion = dict(ngram.fusion, **_shifted(ngram.fusion, shift), shift=round(shift, 2))
            out, kept = _validation(best, ngram, encoder, scores, vlabels), "fused"
    if kept != "fused":  # fusion never makes a model worse on validation than its better part alone
        ngram.fusion = dict(ngram.fusion, **_one_part(kept, scores, truth, multi_label=best.multi_label), kept=kept)
        ngram.thresholds = best.model.config.thresholds if kept == "encoder" else None
        out["validation"] = out[f"validation_{kept}"]
    best.ngram = ngram
    if not best.multi_label:
        fused = torch.softmax(ngram.fuse(encoder, scores), dim=-1).numpy()
        agree = encoder.argmax(1).numpy() == np.asarray(scores).argmax(1)
        best.confidence = calibrate_notice(fused, truth.numpy(), parts.valid_coverage, agree)
    out["fusion"] = dict(ngram.fusion, n_terms=len(ngram.terms), n_word_terms=ngram.n_word_terms,
                         fit_documents=ngram.fit_documents, fit_on=SPLITS[parts.refit])
    if dist.is_main() and ngram.fit_documents < parts.n_fit:
        tqdm.write(f"txl: the n-grams were fit on a random {ngram.fit_documents:,} of the {parts.n_fit:,} documents "
                   f"of the {SPLITS[parts.refit]}: the text the fit reads is capped by its share of --max-minutes "
                   f"and by its memory (at most {ngram_module.fit_limit(ngram.n_words is not None) / 1e6:g}M "
                   "characters)")
    if dist.is_main():
        tqdm.write(f"n-grams fused (a {ngram.fusion['a']:.3g}, b {ngram.fusion['b']:.3g}): validation "
                   + ", ".join(f"{k.replace('validation', 'fused').replace('fused_', '')} {v['accuracy']:.4f}"
                               for k, v in out.items() if "accuracy" in v))
    return out


SPLITS = {False: "training split", True: "training and validation splits"}  # what the n-grams kept were fit on


SHIFTS = np.round(np.arange(0.25, 6.01, 0.25), 2)  # of log(b / a) away from the fit, either way


def _shifted(fusion: dict, shift: float) -> dict:
    """The weights with log(b / a) moved by `shift`, their product kept."""
    return {"a": round(fusion["a"] * math.exp(-shift / 2), 6), "b": round(fusion["b"] * math.exp(shift / 2), 6)}


def nearest_mix(fusion: dict, encoder: torch.Tensor, scores, truth: torch.Tensor, *, floor: float) -> float | None:
    """Single-label: the smallest move of log(b / a) from the fitted weights (SHIFTS, toward the n-grams first
    at equal distance) after which the fused model's validation accuracy is at least `floor` (the better part's
    alone), or None: the part alone, then. On a small validation split one document can put the fitted mix
    below a part; the nearest mix that is not below it keeps both parts."""
    s = torch.as_tensor(scores).float()
    for shift in (x for step in SHIFTS for x in (step, -step)):
        z = fused_logits(encoder.float(), s, **_shifted(fusion, shift), multi_label=False)
        if int((z.argmax(1) == truth).sum()) >= floor * len(truth) - 1e-6:
            return float(shift)
    return None


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
    moved = (f"; the fitted mix scored below a part alone on validation, so b / a was moved by a factor "
             f"{math.exp(fusion['shift']):.3g}, the least that scores as high" if fusion.get("shift") else "")
    return read, "weights fit on the validation split" + (" (scored by n-grams fit on the training split alone)"
                                                           if refit else "") + prior + moved + kept.get(
        fusion.get("kept"), "")
