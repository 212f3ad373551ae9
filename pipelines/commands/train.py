"""Fine-tune a whole-document Transformer-XL classifier on a labelled file.

Reads CSV / TSV / JSONL / Parquet (optionally .gz/.xz/.zst), trains a subword tokenizer on the training texts
(or takes the one of --init), carves out a stratified validation split when --valid is not given, trains with
early stopping on validation macro-F1, and writes a model directory usable by `txl classify`, `txl evaluate`
and the app. `--resume` continues an interrupted run from its last checkpoint.

Several processes or GPUs: `torchrun --nproc_per_node N -m pipelines.cli train ...` trains with
DistributedDataParallel (gloo on CPU, NCCL on GPU); --batch-size stays the global batch, so the run takes
the steps a single process would; add --nnodes for several machines. See docs/SCALING.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

from pipelines.data.bpe_tokenizer import MIN_VOCAB, train_tokenizer
from pipelines.data.labeled_texts import columns_of, load_split, load_train_valid
from pipelines.data.labels import LabelSet
from pipelines.data.word_tokenizer import load_tokenizer
from pipelines.data.writers import write_atomic
from pipelines.errors import UserError, bounded
from pipelines.model.inference import prepare
from pipelines.model.model_dir import ModelDir, load_model_dir, save_model_dir
from pipelines.runtime import distributed as dist
from pipelines.runtime.device import cpu_has_native_bf16
from pipelines.training.fusion_stage import features, fit_phrase, fuse_ngrams, measure_test
from pipelines.training.resume import checkpoint_dir
from pipelines.training.starts import load_start, minilm_available
from pipelines.training.trainer import Recipe, Trainer
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

# The model from random weights (`--init none`, or any shape flag): small enough to train from scratch on a
# 2-core CPU in minutes per epoch on a few thousand documents (benchmarks/RESULTS.md); larger on a GPU.
ARCH_DEFAULTS = {"d_model": 128, "n_layer": 2, "n_head": 4, "d_inner": 512, "segment_len": 256, "mem_len": 256,
                 "vocab_size": 8000, "pooling": "mean", "dropout": 0.1, "attention": "causal"}
ATTENTIONS = ("causal", "bidirectional")
POSITIONS = ("segment", "relative")
RECIPE_HELP = {  # Recipe field: (help, choices)
    "batch_size": ("documents per optimiser step (whole documents, grouped by length)", None),
    "weight_decay": ("AdamW weight decay of the matrices (not of embeddings, biases, norms)", None),
    "warmup": ("fraction of the steps over which the learning rate rises linearly, before its linear decay", None),
    "clip": ("gradient norm clipping", None),
    "patience": ("stop after this many validations without a better macro-F1", None),
    "evals_per_epoch": ("validations (and checkpoints) per epoch", None),
    "class_weights": ("loss weights against class imbalance: none, sqrt (of balanced) or balanced (N / (K n_c); "
                      "multi-label: each label's negatives / positives)", ["none", "sqrt", "balanced"]),
    "save_every": ("minutes between resumable checkpoints besides those at validations; 0: after every step",
                   None),
    "precision": ("auto (bf16 autocast on a GPU, and on a CPU with bf16 units when fine-tuning a start; "
                  "float32 otherwise), float32 or bf16", ["auto", "float32", "bf16"]),
    "seed": ("random seed (split, initialisation, batches, dropout)", None),
}
# Bounds of the numeric flags: a value outside is a one-line usage error, not a failure deep in training.
FLAG_BOUNDS = {"d_model": dict(at_least=1), "n_layer": dict(at_least=1), "n_head": dict(at_least=1),
               "d_inner": dict(at_least=1), "segment_len": dict(at_least=1), "mem_len": dict(at_least=0),
               "vocab_size": dict(at_least=MIN_VOCAB), "dropout": dict(at_least=0, below=1),
               "batch_size": dict(at_least=1), "weight_decay": dict(at_least=0), "warmup": dict(at_least=0, below=1),
               "clip": dict(above=0), "patience": dict(at_least=1), "evals_per_epoch": dict(at_least=1),
               "save_every": dict(at_least=0), "lr": dict(above=0), "epochs": dict(at_least=1),
               "max_minutes": dict(above=0)}


def _kind(name: str, default):
    """The argparse type of a flag: its default's type, bounded by FLAG_BOUNDS."""
    kind = type(default)
    return bounded(kind, **FLAG_BOUNDS[name]) if name in FLAG_BOUNDS and kind in (int, float) else kind


ARCH_HELP = {"pooling": " [mean|max|attention|last]",
             "attention": "; bidirectional: a token also sees the later tokens of its segment (the default from a "
                          "BERT-family --init, which was trained that way); causal: the paper's, the default otherwise"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="labelled training file (csv/tsv/jsonl/parquet, may be compressed)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--valid", help="validation file (default: a stratified 10%% of --train)")
    p.add_argument("--test", help="test file: measured once at the end and written into the model card")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label", help="labels; 'a|b|c' marks a multi-label data set")
    p.add_argument("--split-column", default="split", help="column naming each row's split, when the file has one")
    p.add_argument("--init", default="auto",
                   help="start from pre-trained weights: `minilm` (all-MiniLM-L6-v2 from the minilm extra), a "
                   "BERT-family encoder directory, a Hugging Face transfo-xl directory (e.g. transfo-xl-wt103), "
                   "a `txl train`/`txl pretrain` directory, or `none` (random weights). Default `auto`: minilm "
                   "when the extra is installed and no model-shape flag (--d-model, "
                   "--n-layer, --n-head, --d-inner, --vocab-size) is given, else random weights (benchmarks/RESULTS.md)")
    p.add_argument("--positions", choices=POSITIONS, default="segment",
                   help="a BERT-family --init only: segment (default): keep its absolute position embeddings, "
                   "counted from each segment's start, beside the relative encoding (--segment-len at most its "
                   "512 positions); relative: fold their mean into the token embeddings, as the paper's model has "
                   "relative positions only")
    p.add_argument("--ngrams", choices=("fuse", "words", "off"), default="fuse",
                   help="fuse (default): fit TF-IDF word 1-2-grams and character 2-5-grams + a linear SVM on the "
                   "training split beside the encoder, fuse the two with weights fit on the validation split, then "
                   "refit the n-grams on both splits (pipelines/model/ngrams.py, pipelines/commands/fuse.py); words: the same with "
                   "word n-grams only (the baseline's features; a smaller, faster part); off: the encoder alone")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU when there is one; "
                   "under torchrun each process takes the GPU of its LOCAL_RANK)")
    for name, default in ARCH_DEFAULTS.items():  # None = not given: --init's value, else the default
        p.add_argument("--" + name.replace("_", "-"), type=_kind(name, default), default=None,
                       choices=ATTENTIONS if name == "attention" else None,
                       help=f"model: {name} (default {default})" + ARCH_HELP.get(name, ""))
    p.add_argument("--lr", type=_kind("lr", 0.0), default=None,
                   help=f"recipe: peak learning rate (default {SCRATCH_LR} from random weights, {START_LR} from --init)")
    p.add_argument("--fresh-lr", type=_kind("lr", 0.0), default=None,
                   help="recipe: peak learning rate of the parameters --init does not supply (the head; from a "
                   "BERT-family encoder also the relative-position projection and biases, which start at zero); "
                   f"default {START_FRESH_LR} from --init when --lr is not given, else --lr")
    p.add_argument("--epochs", type=_kind("epochs", 0), default=None,
                   help=f"recipe: passes over the training data (default {SCRATCH_EPOCHS} from random weights, "
                   f"{START_EPOCHS} from --init)")
    for f in fields(Recipe):
        if f.name in ("max_minutes", "lr", "fresh_lr", "epochs"):
            continue
        text, choices = RECIPE_HELP[f.name]
        p.add_argument("--" + f.name.replace("_", "-"), type=_kind(f.name, f.default), default=f.default,
                       choices=choices, help=f"recipe: {text} (default {f.default})")
    p.add_argument("--max-minutes", type=_kind("max_minutes", 0.0), default=None,
                   help="stop gracefully after this many minutes of training, counted over --resume runs too; "
                   "the steps since the last validation are validated first and the best model is kept. A budget "
                   "that ends before the epochs fits the learning-rate schedule: it decays to zero by the budget's end")


def _config(args, tokenizer, label_set: LabelSet) -> TXLConfig:
    d_head = max(1, args.d_model // args.n_head)
    return TXLConfig(vocab_size=tokenizer.get_vocab_size(), d_model=args.d_model, d_embed=args.d_model,
                     n_head=args.n_head, d_head=d_head, d_inner=args.d_inner, n_layer=args.n_layer, cutoffs=[],
                     div_val=1, mem_len=args.mem_len, clamp_len=args.mem_len + args.segment_len, same_length=False,
                     dropout=args.dropout, num_labels=len(label_set.names), labels=list(label_set.names),
                     multi_label=label_set.multi_label, pooling=args.pooling, segment_len=args.segment_len,
                     bidirectional=args.attention == "bidirectional")


SHAPE_FLAGS = ("d_model", "n_layer", "n_head", "d_inner", "vocab_size")
SCRATCH_LR, START_LR = 2e-3, 3e-5  # a pre-trained start wants a small learning rate (imdb: 3e-5 beat 1e-4) ...
START_FRESH_LR = 1e-4  # ... and what it did not supply (head, relative terms) a larger one (imdb: +0.9 encoder)
FRESH = "fresh.json"  # in the checkpoint folder: the names of the parameters --init did not supply
SCRATCH_EPOCHS, START_EPOCHS = 8, 2  # ... and few passes (bbc_news: best validation after the second)


def _resolve_init(args) -> str | None:
    """`auto` -> `minilm` when its extra is installed and no shape flag asks for a model of its own, else None
    (random weights)."""
    if args.init in ("", "none"):
        return None
    if args.init != "auto":
        return args.init
    shaped = any(getattr(args, n) is not None for n in SHAPE_FLAGS)
    why = "model-shape flags given" if shaped else "the minilm extra is not installed" if not minilm_available() else ""
    chosen = None if why else "minilm"  # a --resume repeats the flags and the data: the same choice
    if dist.is_main() and not args.resume:
        print("txl train: starting from " + ("all-MiniLM-L6-v2 (--init minilm)" if chosen else f"random weights ({why})"),
              file=sys.stderr)
    return chosen


def _fill_arch(args, start: dict | None) -> None:
    """Unset model flags take the start's values (--init), else ARCH_DEFAULTS; a start fixes the shape."""
    given = [n for n in SHAPE_FLAGS if getattr(args, n) is not None]
    if start is not None and given:
        raise UserError(f"--{given[0].replace('_', '-')} cannot be changed when starting from --init "
                        "(the pre-trained weights fix the model's shape)")
    start = dict(start or {})
    if "bidirectional" in start:
        start["attention"] = ATTENTIONS[bool(start["bidirectional"])]
    for name, default in ARCH_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, start.get(name, default))


def _initial_model(args, label_set, texts):
    """Model, tokenizer and the names of the parameters --init did not supply (`Recipe.fresh_lr`): from an
    interrupted run, from --init, or new."""
    ck = checkpoint_dir(args.out)
    if args.resume and (ck / "config.json").is_file() and (ck / "tokenizer.json").is_file():
        config = TXLConfig.load(ck)  # the interrupted run's model, whichever model flags this call repeats
        if list(config.labels) != list(label_set.names):
            raise UserError(f"the checkpoint in {ck} was trained on labels {config.labels[:5]}, not this data's; "
                            "pass the same --train, or another --out")
        fresh = json.loads((ck / FRESH).read_text()) if (ck / FRESH).is_file() else []
        return TXLDocumentClassifier(config), load_tokenizer(ck / "tokenizer.json"), fresh
    if args.init:
        start = load_start(args.init, segment_len=args.segment_len or ARCH_DEFAULTS["segment_len"],
                           positions=args.positions)
        _fill_arch(args, start.config)
        if args.segment_len > start.config.get("segment_positions", 0) > 0:
            raise UserError(f"--segment-len {args.segment_len} exceeds the {start.config['segment_positions']} "
                            f"positions of --init {args.init}; pass a smaller --segment-len or --positions relative")
        config = TXLConfig.from_dict(start.config | {
            "num_labels": len(label_set.names), "labels": list(label_set.names), "multi_label": label_set.multi_label,
            "pooling": args.pooling, "segment_len": args.segment_len, "mem_len": args.mem_len, "dropout": args.dropout,
            "clamp_len": start.config.get("clamp_len", args.mem_len + args.segment_len),
            "bidirectional": args.attention == "bidirectional"}
            | ({"same_length": False} if args.attention == "bidirectional" else {}))
        model = TXLDocumentClassifier(config)
        model.transformer.load_state_dict(start.encoder)
        supplied = {"transformer." + k for k in start.encoder if k not in start.fresh}
        return model, start.tokenizer, [n for n, _ in model.named_parameters() if n not in supplied]
    _fill_arch(args, None)
    if args.resume and (ck / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(ck / "tokenizer.json")
    else:
        tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    return TXLDocumentClassifier(_config(args, tokenizer, label_set)), tokenizer, []  # nothing pre-trained


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
    return "\n".join(lines) + "\n"


def _check_out(out: Path, args) -> None:
    """A new run never overwrites a model or an interrupted run's checkpoint (a forgotten --resume)."""
    if args.resume:
        return
    if (checkpoint_dir(out) / "state.json").exists():
        raise UserError(f"{out} holds a training run (its checkpoint/); pass --resume to continue it, or choose "
                        "another --out")
    if (out / "config.json").exists():
        raise UserError(f"{out} already holds a model; choose another --out or pass --resume")


def _label_set(labels: list[str], vlabels: list[str]) -> LabelSet:
    label_set = LabelSet.from_labels(labels)
    unseen = sorted({x for y in vlabels for x in label_set.split(y)} - set(label_set.names))
    if unseen:
        raise UserError(f"validation labels not in the training data: {', '.join(unseen[:5])}")
    if len(label_set.names) < 2 and not label_set.multi_label:
        raise UserError(f"the training data has a single class ({label_set.names[0]!r}); a classifier needs two or more")
    return label_set


def _finish(args, out: Path, state, summary: dict, trainer: Trainer, data) -> dict:
    """Fuse the n-gram component with the best model (unless --ngrams off), measure it on --test (each rank a
    shard), then rank 0 rewrites its card and metrics."""
    final = {"validation": state.best_metrics}
    best = load_model_dir(out)
    prepare(best, precision=trainer.precision, device=str(trainer.device), keep_weights=True)  # saved below
    if args.ngrams != "off":
        final = fuse_ngrams(best, *data, chars=args.ngrams == "fuse")
    if args.test:
        final.update(measure_test(best, *load_split(args.test, columns_of(args), "test")))
    stopped = state.stopped
    if stopped.startswith("time"):
        stopped += (f": {state.step} of {trainer.total} planned steps, the learning rate decayed to zero over the "
                    "budget")
    summary.update(minutes=state.seconds / 60, stopped=stopped)
    best.card = model_card(summary, final)
    best.metrics = {**final, "training": {"minutes": round(state.seconds / 60, 2), "steps": state.step,
                                          "planned_steps": trainer.total, "stopped": state.stopped or "completed",
                                          "precision": trainer.precision, "device": str(trainer.device)}}
    if dist.is_main():
        save_model_dir(out, best)
    dist.barrier()
    return final


def _start(args, label_set: LabelSet, texts: list[str]):
    """`_initial_model` made once, its tokenizer saved in the checkpoint folder.

    Under torchrun rank 0 makes them (tokenizers trained apart need not agree); the other ranks build the same
    shape from its config and read its tokenizer, and DDP gives them rank 0's weights.
    """
    ck = checkpoint_dir(args.out)
    if dist.is_main():
        model, tokenizer, fresh = _initial_model(args, label_set, texts)
        write_atomic(ck / "tokenizer.json", tokenizer.to_str())
        write_atomic(ck / FRESH, json.dumps(fresh))  # a resumed run groups the optimiser's parameters alike
    config, fresh = dist.all_gather_object((model.config.to_dict(), fresh) if dist.is_main() else None)[0]
    if not dist.is_main():  # the gather is also a barrier
        model, tokenizer = TXLDocumentClassifier(TXLConfig.from_dict(config)), load_tokenizer(ck / "tokenizer.json")
    return model, tokenizer, fresh


def run(args: argparse.Namespace) -> int:
    with dist.session(args.device) as device:  # joins the process group under torchrun; nothing otherwise
        return _train(args, device)


def _train(args: argparse.Namespace, device: torch.device) -> int:
    torch.manual_seed(args.seed)
    out = Path(args.out)
    _check_out(out, args)
    texts, labels, vtexts, vlabels = load_train_valid(args.train, args.valid, columns=columns_of(args), seed=args.seed)
    label_set = _label_set(labels, vlabels)
    args.init = _resolve_init(args)
    if args.lr is None:  # --lr alone sets one rate for every parameter (--fresh-lr's default)
        args.lr = START_LR if args.init else SCRATCH_LR
        if args.init and args.fresh_lr is None:
            args.fresh_lr = START_FRESH_LR
    if args.epochs is None:
        args.epochs = START_EPOCHS if args.init else SCRATCH_EPOCHS
    if args.precision == "auto" and args.init and device.type == "cpu" and cpu_has_native_bf16():
        args.precision = "bf16"  # fine-tuning a start in bf16 autocast is the measured recipe, 1.7x float32's speed
    model, tokenizer, fresh = _start(args, label_set, texts)
    if dist.world() > 1:  # one dropout stream per rank: equal masks on every rank would correlate the noise
        torch.manual_seed(args.seed + 1 + dist.rank())
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    keep = [i for i, x in enumerate(ids) if x]
    ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    trainer = Trainer(ModelDir(model, tokenizer, list(label_set.names)), recipe, train_ids=ids,
                      train_y=_targets(labels, label_set), valid_texts=vtexts, valid_labels=vlabels, out=out,
                      device=device, fresh=fresh)
    if args.resume and not trainer.load_checkpoint() and dist.is_main():
        print(f"txl train: no checkpoint in {out}; starting from scratch")
    summary = {"name": out.name, "train": str(args.train), "n_train": len(ids), "n_valid": len(vtexts),
               "train_tokens": sum(map(len, ids)), "labels": list(label_set.names), "multi_label": label_set.multi_label,
               "label_counts": label_set.counts(labels), "recipe": {**asdict(recipe), "ngrams": args.ngrams, **model.config.to_dict()},
               "machine": f"{platform.machine()} {device.type}, {torch.get_num_threads()} threads"
                          + (f" x {dist.world()} processes" if dist.world() > 1 else "")}

    def on_best(metrics):
        summary.update(minutes=trainer.state.seconds / 60, stopped="")
        save_model_dir(out, ModelDir(trainer.model, tokenizer, list(label_set.names),
                                     model_card(summary, {"validation": metrics}), {"validation": metrics}))

    state = trainer.fit(on_best)
    final = _finish(args, out, state, summary, trainer, (texts, labels, vtexts, vlabels))
    if not dist.is_main():
        return 0
    line = ", ".join(f"{k} accuracy {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f}" for k, v in final.items()
                     if "accuracy" in v)
    print(f"txl train: saved {out} after {state.step} steps, {state.seconds / 60:.1f} min "
          f"({state.stopped or 'completed'}); {line}")
    return 0
