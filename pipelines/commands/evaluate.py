"""Measure a model directory on a labelled file: metrics.json, a confusion-matrix PNG, a per-class table, and
predictions.csv (every document's text, true label, predicted label, probabilities and low-confidence notice,
for error analysis; with --explain K, the parts of each document that drove its prediction).
With --calibrate, the low-confidence notice's thresholds are measured on the file's documents and stored in the
model directory (pipelines/model/confidence.py).

Labels in the file that the model never saw are reported and count as errors (the model cannot predict them).
The documents are classified in chunks, each written whole into `<out>/predictions.partial/`: a large test
set takes a while on a CPU (25,000 imdb reviews, half an hour), and a rerun after a kill continues from the
chunks already done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipelines.data.labeled_texts import load_labeled
from pipelines.data.writers import (
    check_writable,
    content_hash,
    escape_formulas,
    job_folder,
    output_lock,
    result_columns,
    write_atomic,
    write_frame,
)
from pipelines.errors import UserError, int_at_least
from pipelines.model.confidence import FILE as CONFIDENCE_FILE
from pipelines.model.confidence import Calibration, calibrate
from pipelines.model.explain import explanation
from pipelines.model.inference import predict, prepare
from pipelines.model.metrics import compute_metrics
from pipelines.model.model_dir import load_model_dir
from pipelines.runtime.device import PRECISIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory written by `txl train`")
    p.add_argument("--data", required=True, help="labelled file (csv/tsv/jsonl/parquet, may be compressed)")
    p.add_argument("--out", required=True, help="folder for metrics.json, per_class.csv, confusion_matrix.png and "
                   "predictions.csv")
    p.add_argument("--text-column", default="text", help="column holding the documents (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the true labels; a|b|c for several")
    p.add_argument("--split-column", default="split", help="column naming each row's split, if the file has one")
    p.add_argument("--split", default="test", help="rows of this split, when the file has a split column")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on a GPU or a CPU with bf16 units, else float32 (as for txl classify)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--chunk-rows", type=int_at_least(1), default=2000,
                   help="documents per restartable chunk: a rerun after a kill continues from the finished ones")
    p.add_argument("--explain", type=int_at_least(0), default=0, metavar="K",
                   help="add an `explanation` column to predictions.csv: the K most influential parts of each "
                        "document, as in `txl classify --explain` (slower: each document is read again in parts)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure the low-confidence notice's thresholds on these documents (held out from "
                        "training: the validation split) and store them in the model directory (confidence.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier evaluation in --out "
                   "(and the model's confidence.json with --calibrate)")


OUT_FILES = ("predictions.csv", "metrics.json", "per_class.csv", "confusion_matrix.png")


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


def evaluate(md, texts: list[str], labels: list[str], predicted: list[str] | None = None) -> dict:
    """Metrics of the model's predictions (`predicted`, or made here) against `labels`."""
    predicted = predicted if predicted is not None else [p.label for p in predict(md, texts)]
    known = set(md.labels)
    seen = sorted({x for y in labels for x in (y.split("|") if md.multi_label else [y])} - known)
    names = md.labels + seen
    metrics = compute_metrics(labels, predicted, names, multi_label=md.multi_label)
    metrics["labels_unknown_to_model"] = seen
    metrics["precision"] = md.precision
    return metrics


def _summary(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "micro_f1")}


def _fingerprint(args, texts: list[str], labels: list[str]) -> str:
    """Identifies one job: another model (any file's content), data set, split, column or option starts over
    instead of mixing."""
    digest = hashlib.sha1("\x00".join(texts + labels).encode("utf-8", "surrogatepass")).hexdigest()
    key = [content_hash(args.model), digest, args.precision, args.chunk_rows, args.explain]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()


def predict_in_chunks(md, texts: list[str], labels: list[str], part: Path, *, chunk_rows: int,
                      explain: int = 0) -> pd.DataFrame:
    """Every document's prediction as a frame (text, label, predicted_label, score, prob_<label>, notice, error,
    and with `explain` its top parts), made chunk by chunk; a chunk already in `part` is read back instead of
    classified again."""
    frames, bar = [], tqdm(total=len(texts), unit="doc", dynamic_ncols=True, desc="evaluate")
    for start in range(0, len(texts), chunk_rows):
        target = part / f"part-{start // chunk_rows:06d}.parquet"
        if target.is_file():
            frame = pd.read_parquet(target)
            bar.update(len(frame))
        else:
            chunk = pd.DataFrame({"text": texts[start:start + chunk_rows], "label": labels[start:start + chunk_rows]})
            preds = predict(md, chunk["text"].tolist(), progress=bar.update)
            frame = result_columns(chunk, preds, md.labels, 0)
            if md.ngram is not None:  # what each part of the fused model alone predicts
                frame["encoder_label"] = [p.encoder_label for p in preds]
                frame["ngram_label"] = [p.ngram_label for p in preds]
            if explain:
                frame["explanation"] = [explanation(md, t, explain) if not p.error else "[]"
                                        for t, p in zip(chunk["text"], preds)]
            tmp = target.with_name(f".{target.name}.tmp")
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, target)
        frames.append(frame)
    bar.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["text", "label"])


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Nothing in --out is replaced unless asked: a model directory's metrics.json least of all."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder")
    if overwrite:
        return
    if (out / "config.json").is_file():
        raise UserError(f"--out {out} is a model directory (its metrics.json would be replaced); choose another "
                        "folder, or pass --overwrite")
    taken = [name for name in OUT_FILES if (out / name).exists()]
    if taken:
        raise UserError(f"--out {out} already holds {', '.join(taken)}; pass --overwrite to replace them, or choose "
                        "another folder")


def notice_figures(md, frame: pd.DataFrame, labels: list[str]) -> dict | None:
    """What the low-confidence notice meant on these documents: the share that got it and the accuracy of those
    and of the rest (None: the model has no notice)."""
    if md.confidence is None or "notice" not in frame:
        return None
    flagged = frame["notice"].fillna("").astype(bool)
    right = frame["predicted_label"].astype(str) == pd.Series(labels, index=frame.index).astype(str)
    share = lambda mask: round(float(right[mask].mean()), 6) if mask.any() else None  # noqa: E731
    return {"share": round(float(flagged.mean()), 6) if len(frame) else 0.0, "accuracy_flagged": share(flagged),
            "accuracy_rest": share(~flagged)}


def calibrate_model(md, texts: list[str], labels: list[str], frame: pd.DataFrame) -> Calibration:
    """The notice's thresholds from these documents' predictions (`predict_in_chunks`)."""
    done = frame["error"].fillna("") == ""
    probs = frame.loc[done, [f"prob_{n}" for n in md.labels]].to_numpy()
    index = {n: i for i, n in enumerate(md.labels)}
    truth = [index.get(str(y), -1) for y, ok in zip(labels, done) if ok]
    coverage = agree = None
    if md.ngram is not None:
        coverage = md.ngram.coverage([t for t, ok in zip(texts, done) if ok])
        agree = (frame.loc[done, "encoder_label"] == frame.loc[done, "ngram_label"]).to_numpy()
    return calibrate(probs, truth, coverage, agree, source="calibration")


def _check_calibrate(args) -> None:
    if not args.calibrate:
        return
    target = Path(args.model) / CONFIDENCE_FILE
    if target.exists() and not args.overwrite:
        raise UserError(f"{target} exists; pass --overwrite to measure it again on {args.data}")
    if not os.access(args.model, os.W_OK):
        raise UserError(f"--calibrate writes {target}, but {args.model} is read-only; copy the model first")


def run(args: argparse.Namespace) -> int:
    _check_out(Path(args.out), overwrite=args.overwrite)
    _check_calibrate(args)
    check_writable(Path(args.out), "--out")
    with output_lock(args.out, "evaluate"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    md = prepare(load_model_dir(args.model), precision=args.precision, device=args.device)
    if args.calibrate and md.multi_label:
        raise UserError("--calibrate: the low-confidence notice is for single-label models; this one is multi-label")
    texts, labels = load_labeled(args.data, text_column=args.text_column, label_column=args.label_column,
                                 split_column=args.split_column, split=args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    part = job_folder(out / "predictions.partial", _fingerprint(args, texts, labels), "evaluate")
    resumed = len(list(part.glob("part-*.parquet")))
    frame = predict_in_chunks(md, texts, labels, part, chunk_rows=args.chunk_rows, explain=args.explain)
    metrics = evaluate(md, texts, labels, predicted=frame["predicted_label"].tolist())
    if "encoder_label" in frame:
        metrics["components"] = {part: _summary(evaluate(md, texts, labels, predicted=frame[f"{part}_label"].tolist()))
                                 for part in ("encoder", "ngram")}
    if (notice := notice_figures(md, frame, labels)) is not None:
        metrics["notice"] = notice
    write_frame([frame], out / "predictions.csv")
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    table = pd.DataFrame(metrics["per_class"]).T.rename_axis("label").reset_index()
    escape_formulas(table).to_csv(out / "per_class.csv", index=False)
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], metrics["labels"], out / "confusion_matrix.png")
    shutil.rmtree(part)
    if args.calibrate:
        md.confidence = calibrate_model(md, texts, labels, frame)
        write_atomic(Path(args.model) / CONFIDENCE_FILE, md.confidence.files()[CONFIDENCE_FILE])
        print(f"txl evaluate: stored the low-confidence notice in {Path(args.model) / CONFIDENCE_FILE}: "
              f"{md.confidence.summary()}")
    if metrics["labels_unknown_to_model"]:
        print(f"txl evaluate: {len(metrics['labels_unknown_to_model'])} labels in the data are unknown to the model "
              f"and count as errors: {', '.join(metrics['labels_unknown_to_model'][:5])}")
    again = f" ({resumed} chunks reused from an interrupted run)" if resumed else ""
    parts = "".join(f"; {part} alone {m['accuracy']:.4f}" for part, m in metrics.get("components", {}).items())
    print(f"txl evaluate: {metrics['n_documents']} documents, accuracy {metrics['accuracy']:.4f}, "
          f"macro-F1 {metrics['macro_f1']:.4f}, micro-F1 {metrics['micro_f1']:.4f}{parts}; wrote {out}{again}")
    return 0
