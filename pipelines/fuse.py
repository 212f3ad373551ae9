"""Give a trained model directory its n-gram component (or a new one), without retraining the encoder.

`fuse_ngrams` is the stage `txl train` ends with (`--ngrams fuse`, the default); `txl fuse` runs it alone,
for a model trained with `--ngrams off` or before n-grams existed. It carves the validation split `txl train`
carved (the same stratified 10% for the same --seed) unless --valid is given, fits TF-IDF + a linear SVM on
the rest, fits the fusion weights on the validation split (`pipelines/ngram.py`), then refits the n-grams on
both splits: the weights are fit on held-out scores, and the model kept reads every labelled document. Test
figures measured before are kept as the encoder's alone.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist
from .errors import UserError
from .inference import PRECISIONS, predict, prepare
from .labels import LabelSet
from .metrics import compute_metrics, decide, tune_thresholds
from .modeldir import ModelDir, load_model_dir, save_model_dir
from . import ngram as ngram_module
from .fusion import fit_fusion
from .ngram import fit_ngram


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
    the validation split (`pipelines/ngram.py`), then, with `refit`, fit the n-grams again on both splits under
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
    from .train import _data, _load_split  # train imports this module: its data helpers, loaded at run time

    md = load_model_dir(args.model)
    texts, labels, vtexts, vlabels = _data(args)
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
        tested = measure_test(md, *_load_split(args.test, args, "test"))
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


def main(argv=None) -> int:
    from .cli import main as cli_main
    return cli_main(["fuse", *(sys.argv[1:] if argv is None else argv)])
