"""Measure a model directory on a labelled file: metrics.json, a confusion-matrix PNG, a per-class table.

Labels in the file that the model never saw are reported and count as errors (the model cannot predict them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .inference import PRECISIONS, predict, prepare
from .labeled import load_labeled
from .metrics import compute_metrics
from .modeldir import load_model_dir, write_atomic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory written by `txl train`")
    p.add_argument("--data", required=True, help="labelled file (csv/tsv/jsonl/parquet, may be compressed)")
    p.add_argument("--out", required=True, help="folder for metrics.json, confusion_matrix.png, per_class.csv")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split-column", default="split")
    p.add_argument("--split", default="test", help="rows of this split, when the file has a split column")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="as for txl classify")
    p.add_argument("--device", default="auto")


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 25:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="black" if v < max(map(max, matrix)) / 2 else "white")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(md, texts: list[str], labels: list[str]) -> dict:
    preds = predict(md, texts)
    known = set(md.labels)
    seen = sorted({x for y in labels for x in (y.split("|") if md.multi_label else [y])} - known)
    names = md.labels + seen
    metrics = compute_metrics(labels, [p.label for p in preds], names, multi_label=md.multi_label)
    metrics["labels_unknown_to_model"] = seen
    metrics["precision"] = md.precision
    return metrics


def run(args: argparse.Namespace) -> int:
    md = prepare(load_model_dir(args.model), precision=args.precision, device=args.device)
    texts, labels = load_labeled(args.data, text_column=args.text_column, label_column=args.label_column,
                                 split_column=args.split_column, split=args.split)
    metrics = evaluate(md, texts, labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    table = pd.DataFrame(metrics["per_class"]).T.rename_axis("label").reset_index()
    table.to_csv(out / "per_class.csv", index=False)
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], metrics["labels"], out / "confusion_matrix.png")
    if metrics["labels_unknown_to_model"]:
        print(f"txl evaluate: {len(metrics['labels_unknown_to_model'])} labels in the data are unknown to the model "
              f"and count as errors: {', '.join(metrics['labels_unknown_to_model'][:5])}")
    print(f"txl evaluate: {metrics['n_documents']} documents, accuracy {metrics['accuracy']:.4f}, "
          f"macro-F1 {metrics['macro_f1']:.4f}, micro-F1 {metrics['micro_f1']:.4f}; wrote {out}")
    return 0


def main(argv=None) -> int:
    from .cli import main as cli_main
    return cli_main(["evaluate", *(argv or [])])
