"""Fine-tune a whole-document Transformer-XL classifier on a labelled file.

Reads CSV / TSV / JSONL / Parquet (optionally .gz/.xz/.zst), trains a subword tokenizer on the training texts
(or takes the one of --init), carves out a stratified validation split when --valid is not given, trains with
early stopping on validation macro-F1, and writes a model directory usable by `txl classify`, `txl evaluate`
and the app. `--resume` continues an interrupted run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict, fields
from pathlib import Path

import torch

from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

from .errors import UserError
from .inference import predict, prepare, resolve_device
from .io import load_labeled
from .labels import LabelSet, stratified_split
from .metrics import compute_metrics
from .modeldir import ModelDir, load_model_dir, save_model_dir
from .subword import train_tokenizer
from .trainer import Recipe, Trainer

# The default recipe: small enough to train from scratch on a 2-core CPU in minutes per epoch on a few
# thousand documents (benchmarks/RESULTS.md); pass larger sizes on a GPU.
ARCH_DEFAULTS = {"d_model": 128, "n_layer": 2, "n_head": 4, "d_inner": 512, "segment_len": 256, "mem_len": 256,
                 "vocab_size": 8000, "pooling": "mean", "dropout": 0.1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="labelled training file (csv/tsv/jsonl/parquet, may be compressed)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--valid", help="validation file (default: a stratified 10%% of --train)")
    p.add_argument("--test", help="test file: measured once at the end and written into the model card")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label", help="labels; 'a|b|c' marks a multi-label data set")
    p.add_argument("--split-column", default="split", help="column naming each row's split, when the file has one")
    p.add_argument("--init", help="start from this model directory (a classifier or a language model)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    for name, default in ARCH_DEFAULTS.items():
        kind = type(default)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=f"model: {name} (default {default})" + (" [mean|max|attention|last]" if name == "pooling" else ""))
    for f in fields(Recipe):
        if f.name in ("max_minutes",):
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"recipe: {f.name} (default {f.default})")
    p.add_argument("--max-minutes", type=float, default=None, help="stop gracefully after this many minutes")


def _load_split(path: str, args, split: str | None):
    return load_labeled(path, text_column=args.text_column, label_column=args.label_column,
                        split_column=args.split_column, split=split)


def _data(args):
    texts, labels = _load_split(args.train, args, "train")
    if args.valid:
        vtexts, vlabels = _load_split(args.valid, args, "valid")
    else:
        tr, va = stratified_split(labels, valid_fraction=0.1, seed=args.seed)
        texts, labels, vtexts, vlabels = [texts[i] for i in tr], [labels[i] for i in tr], \
            [texts[i] for i in va], [labels[i] for i in va]
    return texts, labels, vtexts, vlabels


def _config(args, tokenizer, label_set: LabelSet) -> TXLConfig:
    d_head = max(1, args.d_model // args.n_head)
    return TXLConfig(vocab_size=tokenizer.get_vocab_size(), d_model=args.d_model, d_embed=args.d_model,
                     n_head=args.n_head, d_head=d_head, d_inner=args.d_inner, n_layer=args.n_layer, cutoffs=[],
                     div_val=1, mem_len=args.mem_len, clamp_len=args.mem_len + args.segment_len, same_length=False,
                     dropout=args.dropout, num_labels=len(label_set.names), labels=list(label_set.names),
                     multi_label=label_set.multi_label, pooling=args.pooling, segment_len=args.segment_len)


def _initial_model(args, label_set, texts):
    """Model and tokenizer: from --init, from an interrupted run, or new."""
    ck = Path(args.out) / "checkpoint"
    if args.init:
        base = load_model_dir(args.init) if (Path(args.init) / "tokenizer.json").is_file() else None
        if base is None:
            raise UserError(f"--init {args.init}: expected a model directory with tokenizer.json")
        config = TXLConfig.from_dict(base.model.config.to_dict() | {
            "num_labels": len(label_set.names), "labels": list(label_set.names),
            "multi_label": label_set.multi_label, "pooling": args.pooling})
        model = TXLDocumentClassifier(config)
        model.transformer.load_state_dict(base.model.transformer.state_dict())
        return model, base.tokenizer
    if args.resume and (ck / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(ck / "tokenizer.json"))
    else:
        tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    return TXLDocumentClassifier(_config(args, tokenizer, label_set)), tokenizer


def _targets(labels: list[str], label_set: LabelSet) -> torch.Tensor:
    return torch.as_tensor(label_set.encode(labels))


def model_card(summary: dict, metrics: dict) -> str:
    """A short markdown model card: data, recipe, measured metrics."""
    lines = [f"# {summary['name']}", "", "Whole-document Transformer-XL classifier trained with `txl train`.", "",
             "## Data", "", f"- training file: `{summary['train']}` ({summary['n_train']} documents, "
             f"{summary['train_tokens']:,} tokens), validation: {summary['n_valid']} documents",
             f"- labels ({len(summary['labels'])}{', multi-label' if summary['multi_label'] else ''}): "
             + ", ".join(f"{k} ({v})" for k, v in summary["label_counts"].items()), "",
             "## Recipe", "", "```json", json.dumps(summary["recipe"], indent=1), "```", "",
             f"Trained for {summary['minutes']:.1f} min on {summary['machine']} ({summary['stopped'] or 'completed'}).",
             "", "## Metrics", "", "| split | documents | accuracy | macro-F1 | micro-F1 |", "|---|---:|---:|---:|---:|"]
    for split, m in metrics.items():
        if "accuracy" in m:
            lines.append(f"| {split} | {m['n_documents']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['micro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def _check_out(out: Path, args) -> None:
    if (out / "config.json").exists() and not args.resume and not (out / "checkpoint").exists():
        raise UserError(f"{out} already holds a model; choose another --out or pass --resume")


def _label_set(labels: list[str], vlabels: list[str]) -> LabelSet:
    label_set = LabelSet.from_labels(labels)
    unseen = sorted({x for y in vlabels for x in label_set.split(y)} - set(label_set.names))
    if unseen:
        raise UserError(f"validation labels not in the training data: {', '.join(unseen[:5])}")
    if len(label_set.names) < 2 and not label_set.multi_label:
        raise UserError(f"the training data has a single class ({label_set.names[0]!r}); a classifier needs two or more")
    return label_set


def _finish(args, out: Path, state, summary: dict) -> dict:
    """Measure the best model on --test, then rewrite its card and metrics with the final figures."""
    final = {"validation": state.best_metrics}
    best = load_model_dir(out)
    if args.test:
        ttexts, tlabels = _load_split(args.test, args, "test")
        preds = predict(prepare(best, precision="float32", device=args.device), ttexts)
        final["test"] = compute_metrics(tlabels, [p.label for p in preds], best.labels, multi_label=best.multi_label)
    summary.update(minutes=state.seconds / 60, stopped=state.stopped)
    best.card = model_card(summary, final)
    best.metrics = {**final, "training": {"minutes": round(state.seconds / 60, 2), "steps": state.step,
                                          "stopped": state.stopped or "completed"}}
    save_model_dir(out, best)
    return final


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    out = Path(args.out)
    _check_out(out, args)
    texts, labels, vtexts, vlabels = _data(args)
    label_set = _label_set(labels, vlabels)
    model, tokenizer = _initial_model(args, label_set, texts)
    (out / "checkpoint").mkdir(parents=True, exist_ok=True)
    (out / "checkpoint" / "tokenizer.json").write_text(tokenizer.to_str())
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    keep = [i for i, x in enumerate(ids) if x]
    ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    device = resolve_device(args.device)
    trainer = Trainer(ModelDir(model, tokenizer, list(label_set.names)), recipe, train_ids=ids,
                      train_y=_targets(labels, label_set), valid_texts=vtexts, valid_labels=vlabels, out=out,
                      device=device)
    if args.resume and not trainer.load_checkpoint():
        print(f"txl train: no checkpoint in {out}; starting from scratch")
    summary = {"name": out.name, "train": str(args.train), "n_train": len(ids), "n_valid": len(vtexts),
               "train_tokens": sum(map(len, ids)), "labels": list(label_set.names), "multi_label": label_set.multi_label,
               "label_counts": label_set.counts(labels), "recipe": {**asdict(recipe), **model.config.to_dict()},
               "machine": f"{platform.machine()} {device.type}, {torch.get_num_threads()} threads"}

    def on_best(metrics):
        summary.update(minutes=trainer.state.seconds / 60, stopped="")
        save_model_dir(out, ModelDir(trainer.model, tokenizer, list(label_set.names),
                                     model_card(summary, {"validation": metrics}), {"validation": metrics}))

    state = trainer.fit(on_best)
    final = _finish(args, out, state, summary)
    line = ", ".join(f"{k} accuracy {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f}" for k, v in final.items() if v)
    print(f"txl train: saved {out} after {state.step} steps, {state.seconds / 60:.1f} min "
          f"({state.stopped or 'completed'}); {line}")
    return 0


def main(argv=None) -> int:
    from .cli import main as cli_main
    return cli_main(["train", *(argv or [])])
