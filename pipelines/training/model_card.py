"""The model card `txl train` writes beside the weights: data, recipe, measured metrics."""
from __future__ import annotations

import json

from pipelines.training.fusion_stage import features, fit_phrase


def model_card(summary: dict, metrics: dict) -> str:
    """A short markdown model card: data, recipe, measured metrics."""
    lines = [f"# {summary['name']}", "", "Whole-document Transformer-XL classifier trained with `txl train`.", "",
             "## Data", "", f"- training file: `{summary['train']}` ({summary['n_train']} documents, "
             f"{summary['train_tokens']:,} tokens), validation: {summary['n_valid']} documents",
             f"- labels ({len(summary['labels'])}{', multi-label' if summary['multi_label'] else ''}): "
             + ", ".join(f"{k} ({v})" for k, v in summary["label_counts"].items()), "",
             "## Recipe", "", "```json", json.dumps(summary["recipe"], indent=1), "```", "",
             f"Trained for {summary['minutes']:.1f} min on {summary['machine']} ({summary['stopped'] or 'completed'}).",
             *_stages(summary), "", "## Metrics", "", "| split | documents | accuracy | macro-F1 | micro-F1 |",
             "|---|---:|---:|---:|---:|"]
    names = {"validation_encoder": "validation, encoder alone", "validation_ngram": "validation, n-grams alone",
             "test_encoder": "test, encoder alone", "test_ngram": "test, n-grams alone"}
    for split, m in metrics.items():
        if "accuracy" in m:
            lines.append(f"| {names.get(split, split)} | {m['n_documents']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} "
                         f"| {m['micro_f1']:.4f} |")
    if "fusion" in metrics:
        f = metrics["fusion"]
        read, weights = fit_phrase(f, summary["n_train"], summary["n_valid"])
        lines += ["", f"The encoder's log-probabilities are fused with {features(f)} fit on {read}: logits = "
                  f"{f['a']:.3g} x encoder + {f['b']:.3g} x n-gram scores, {weights} "
                  "(`txl train --ngrams`, pipelines/model/ngrams.py, pipelines/model/fusion.py)."]
    if summary.get("notice"):
        lines += ["", f"Low-confidence notice (pipelines/model/confidence.py, thresholds in confidence.json): "
                  f"{summary['notice']}."]
    if summary.get("examples"):
        lines += ["", f"examples.json holds {summary['examples']} validation documents, one per label, shown on the "
                  "app's landing page (`txl train --no-examples` leaves them out)."]
    return "\n".join(lines) + "\n"


def _stages(summary: dict) -> list[str]:
    """What the reading stage did and which stage produced the kept model."""
    frozen, lines = summary.get("frozen"), []
    if frozen and frozen.get("plan"):
        lines += ["", f"The run's {frozen['plan']}."]
    if frozen:
        whole = "all" if frozen["read"] == frozen["total"] else f"a random {frozen['read']:,} of the"
        lines += ["", f"Read {whole} {frozen['total']:,} training documents whole with the frozen encoder "
                  f"({frozen['tokens']:,} tokens at {frozen['tokens_per_second']:,} tokens/s, "
                  f"{frozen['seconds'] / 60:.1f} min) and fit the head on their pooled vectors (C {frozen['c']:g}); "
                  + ("no fine-tuning followed: the plan gave the budget to reading."
                     if str(summary.get("stopped", "")).startswith("no fine-tuning") else
                     "fine-tuning then started from that model.")]
    if summary.get("kept"):
        lines += ["", f"Kept: the model from {summary['kept']} (the best on validation macro-F1)."]
    return lines
