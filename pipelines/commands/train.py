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
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.data import token_ids
from pipelines.data.bpe_tokenizer import MIN_VOCAB
from pipelines.data.labeled_texts import columns_of, load_split, load_train_valid
from pipelines.data.labels import SEPARATOR, LabelSet
from pipelines.data.writers import write_atomic
from pipelines.errors import UserError, bounded
from pipelines.model.confidence import calibrate as calibrate_notice
from pipelines.model.examples import pick as pick_examples
from pipelines.model.inference import prepare
from pipelines.model.model_dir import ModelDir, load_model_dir, save_model_dir
from pipelines.runtime import distributed as dist
from pipelines.runtime.device import cpu_has_native_bf16, resolve_precision
from pipelines.training.budget import (
    MIN_VALID,
    NGRAM_SHARE,
    VALID_SHARE,
    Budget,
    fine_tune_steps,
    plan_line,
    split,
    step_seconds,
)
from pipelines.training.frozen_stage import FrozenResult, planned, reading_order, run_frozen_stage
from pipelines.training.fusion_stage import (
    NgramParts,
    encoder_scores,
    fit_parts,
    fuse_parts,
    measure_test,
    scores_of,
)
from pipelines.training.initial_model import start_model
from pipelines.training.model_card import model_card
from pipelines.training.plan import ARCH_DEFAULTS, ATTENTIONS, SHAPE_FLAGS, TrainPlan, check_shape
from pipelines.training.recipe import Recipe
from pipelines.training.resume import checkpoint_dir
from pipelines.training.starts import minilm_available
from pipelines.training.trainer import Trainer

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
    "backprop_segments": ("back-propagate through at most this many consecutive segments of each step's documents "
                          "(a window drawn at random each step; the loss still reads the documents whole, and the "
                          "window's gradients are exact); 0: every segment, the exact gradient", None),
}
# Bounds of the numeric flags: a value outside is a one-line usage error, not a failure deep in training.
FLAG_BOUNDS = {"d_model": dict(at_least=1), "n_layer": dict(at_least=1), "n_head": dict(at_least=1),
               "d_inner": dict(at_least=1), "segment_len": dict(at_least=1), "mem_len": dict(at_least=0),
               "vocab_size": dict(at_least=MIN_VOCAB), "dropout": dict(at_least=0, below=1),
               "batch_size": dict(at_least=1), "weight_decay": dict(at_least=0), "warmup": dict(at_least=0, below=1),
               "clip": dict(above=0), "patience": dict(at_least=1), "evals_per_epoch": dict(at_least=1),
               "save_every": dict(at_least=0), "backprop_segments": dict(at_least=0), "lr": dict(above=0),
               "epochs": dict(at_least=1), "max_minutes": dict(above=0)}


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
    p.add_argument("--frozen", choices=("auto", "off"), default="auto",
                   help="auto (default, with a pre-trained --init): first read the training documents whole with the "
                   "frozen encoder (at inference speed; a random sample of them when --max-minutes allows no more) "
                   "and fit the head on their pooled vectors, then fine-tune from that model and keep the better "
                   "one on validation; off: fine-tune from the start's weights at once")
    p.add_argument("--no-examples", action="store_true",
                   help="do not keep one validation document per label in the model directory (examples.json, "
                   "shown on the app's landing page): for a model shared without any of its data")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--multi-label", choices=("auto", "yes", "no"), default="auto",
                   help="yes: a|b|c labels name several classes; no: single-label (a label holding '|' is refused); "
                   "auto (default): multi-label when some label holds '|', said in one line")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that is not empty, replacing "
                   "the files of the same names (a model there included)")
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


FROZEN_FILE = "frozen.json"  # in the checkpoint folder: what the frozen stage read and fit
SCRATCH_LR, START_LR = 2e-3, 3e-5  # a pre-trained start wants a small learning rate (imdb: 3e-5 beat 1e-4) ...
START_FRESH_LR = 1e-4  # ... and what it did not supply (head, relative terms) a larger one (imdb: +0.9 encoder)
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


def _recipe(args, init: str | None, device: torch.device) -> Recipe:
    """The recipe flags, with the start's defaults where a flag was not given."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe)}
    if given["lr"] is None:  # --lr alone sets one rate for every parameter (--fresh-lr's default)
        given["lr"] = START_LR if init else SCRATCH_LR
        if init and given["fresh_lr"] is None:
            given["fresh_lr"] = START_FRESH_LR
    if given["epochs"] is None:
        given["epochs"] = START_EPOCHS if init else SCRATCH_EPOCHS
    if given["precision"] == "auto" and init and device.type == "cpu" and cpu_has_native_bf16():
        given["precision"] = "bf16"  # fine-tuning a start in bf16 autocast: the measured recipe, 1.7x float32's speed
    return Recipe(**given)


def plan_of(args: argparse.Namespace, device: torch.device) -> TrainPlan:
    """Every option of the run, resolved once."""
    init = _resolve_init(args)
    return TrainPlan(train=args.train, out=Path(args.out), recipe=_recipe(args, init, device), init=init,
                     valid=args.valid, test=args.test, columns=columns_of(args), positions=args.positions,
                     ngrams=args.ngrams, resume=args.resume, arch={n: getattr(args, n) for n in ARCH_DEFAULTS},
                     frozen=args.frozen == "auto" and init is not None, examples=not args.no_examples)


def _targets(labels: list[str], label_set: LabelSet) -> torch.Tensor:
    return torch.as_tensor(label_set.encode(labels))


def _check_out(out: Path, *, resume: bool, overwrite: bool = False) -> None:
    """A new run never overwrites a model, an interrupted run's checkpoint (a forgotten --resume) or a user's
    files (a model card would replace their README.md) unless asked."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the model")
    if resume:
        return
    if (checkpoint_dir(out) / "state.json").exists():
        raise UserError(f"{out} holds a training run (its checkpoint/); pass --resume to continue it, or choose "
                        "another --out")
    if (out / "config.json").exists() and not overwrite:
        raise UserError(f"{out} already holds a model; choose another --out, pass --resume, or --overwrite to "
                        "replace it")
    theirs = sorted(p.name for p in out.iterdir() if p.name != "checkpoint") if out.is_dir() else []
    if theirs and not overwrite and not (out / "config.json").exists():
        raise UserError(f"--out {out} is not empty ({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}); "
                        "choose a new or empty folder, or pass --overwrite (the files txl writes there are replaced)")


def _label_set(labels: list[str], vlabels: list[str], multi_label: str = "auto") -> LabelSet:
    if multi_label == "no" and (joined := next((y for y in labels if SEPARATOR in y), None)) is not None:
        raise UserError(f"label {joined!r} holds '|', which joins the labels of a multi-label row; rename such labels "
                        "or drop --multi-label no")
    label_set = LabelSet.from_labels(labels, None if multi_label == "auto" else multi_label == "yes")
    if multi_label == "auto" and label_set.multi_label and dist.is_main():
        shown = ", ".join(label_set.names[:6]) + (", ..." if len(label_set.names) > 6 else "")
        print(f"txl train: labels hold '|': training a multi-label model over {len(label_set.names)} labels ({shown}); "
              "pass --multi-label yes to say so, or rename the labels", file=sys.stderr)
    unseen = sorted({x for y in vlabels for x in label_set.split(y)} - set(label_set.names))
    if unseen:
        raise UserError(f"validation labels not in the training data: {', '.join(unseen[:5])}")
    if len(label_set.names) < 2 and not label_set.multi_label:
        raise UserError(f"the training data has a single class ({label_set.names[0]!r}); a classifier needs two or more")
    return label_set


def _ngram_stage(plan: TrainPlan, label_set: LabelSet, data) -> NgramParts | None:
    """The n-grams, fit before anything else in at most NGRAM_SHARE of the budget (their time is then known when
    the rest is split), or those an interrupted run already fit (kept in the checkpoint folder)."""
    if plan.ngrams == "off":
        return None
    ck = checkpoint_dir(plan.out)
    if plan.resume and (parts := NgramParts.load(ck)) is not None:
        return parts
    minutes = plan.recipe.max_minutes
    parts = fit_parts(*data, label_set, chars=plan.ngrams == "fuse",
                      seconds=None if minutes is None else NGRAM_SHARE * 60 * minutes)
    if parts is not None and dist.is_main():
        ck.mkdir(parents=True, exist_ok=True)
        for name, content in parts.files().items():
            write_atomic(ck / name, content)
        tqdm.write(f"txl train: n-grams fit in {parts.seconds / 60:.1f} min", file=sys.stderr)
    return parts


def _frozen(plan: TrainPlan, md: ModelDir, ids, y, vtexts, vlabels, device, budget: Budget) -> FrozenResult | None:
    """The stage without back-propagation (`--frozen auto` from a pre-trained start, one process), or the one an
    interrupted run already did (its result is kept in the checkpoint folder)."""
    saved = checkpoint_dir(plan.out) / FROZEN_FILE
    if plan.resume and saved.is_file() and (checkpoint_dir(plan.out) / "state.json").is_file():
        return FrozenResult(**json.loads(saved.read_text()))  # its head is in the checkpoint
    if not plan.frozen or dist.world() > 1:
        return None
    precision = resolve_precision("auto", device)  # reading runs at inference speed, whatever training uses
    lengths, said = [len(x) for x in ids], []
    order = reading_order(len(ids), plan.recipe.seed)
    window = plan.recipe.backprop_segments * md.model.config.segment_len

    def allowance(speed: float, spent: float, n_valid: int) -> float | None:
        step = step_seconds(lengths, batch_size=plan.recipe.batch_size, window_tokens=window, tokens_per_second=speed)
        chosen = split(budget, spent=spent, read_all=sum(lengths) / max(speed, 1e-9), step=step)
        n = planned(lengths, order, seconds=None if chosen.reading is None else chosen.reading - spent,
                    tokens_per_second=speed)
        said.append(plan_line(precision=precision, device=device.type, tokens_per_second=speed, planned=n,
                              n_train=len(ids), planned_tokens=sum(lengths[i] for i in order[:n]), budget=budget,
                              plan=chosen, spent=spent, valid=(n_valid, len(vtexts))))
        tqdm.write(said[-1], file=sys.stderr)
        return chosen.reading

    left = budget.left(0.0)
    result = run_frozen_stage(md, ids, y, vtexts, vlabels, folder=checkpoint_dir(plan.out) / "features",
                              precision=precision, device=str(device), seed=plan.recipe.seed, allowance=allowance,
                              valid_seconds=None if left is None else VALID_SHARE * left, min_valid=MIN_VALID)
    if result is not None:
        result = replace(result, plan=said[-1].removeprefix("txl train: ") if said else "")
        tqdm.write(f"txl train: head fit on {result.read:,} of {result.total:,} documents read whole in "
                   f"{result.seconds / 60:.1f} min: validation accuracy {result.metrics['accuracy']:.4f} "
                   f"macro-F1 {result.metrics['macro_f1']:.4f}", file=sys.stderr)
    return result


def _tuning_minutes(plan: TrainPlan, budget: Budget, frozen: FrozenResult | None, lengths: list[int],
                    window: int) -> float | None:
    """Fine-tuning's share of the budget once reading is done: what is left, or 0 when that is too little for
    MIN_STEPS steps and the last validation (None: no budget)."""
    left = budget.left(frozen.seconds if frozen else 0.0)
    if left is None or frozen is None or not frozen.tokens_per_second:
        return None if left is None else left / 60
    step = step_seconds(lengths, batch_size=plan.recipe.batch_size, window_tokens=window,
                        tokens_per_second=frozen.tokens_per_second)
    return left / 60 if fine_tune_steps(left, validation=frozen.valid_seconds, step=step) else 0.0


def _finish(plan: TrainPlan, state, summary: dict, trainer: Trainer, parts: NgramParts | None, data,
            spent: float) -> dict:
    """Fuse the n-gram component with the best model (unless --ngrams off), measure it on --test (each rank a
    shard), then rank 0 rewrites its card and metrics."""
    final = {"validation": state.best_metrics}
    best = load_model_dir(plan.out)
    prepare(best, precision=trainer.precision, device=str(trainer.device), keep_weights=True)  # saved below
    started = time.monotonic()
    _, _, vtexts, vlabels = data
    probs = trainer.best_probs  # the kept model's validation probabilities (None: not read in this process)
    if parts is not None:
        encoder = encoder_scores(best, vtexts) if probs is None else scores_of(probs, multi_label=best.multi_label)
        final = fuse_parts(best, parts, encoder, vlabels)
        probs = None if best.multi_label else torch.softmax(best.ngram.fuse(encoder, parts.valid_scores), -1).numpy()
    if probs is not None and not best.multi_label:
        truth = np.asarray(LabelSet(best.labels).encode(vlabels))
        if parts is None:  # the encoder alone: its own validation reading (fuse_parts calibrates a fused model)
            best.confidence = calibrate_notice(probs, truth)
        if plan.examples:
            best.examples = pick_examples(vtexts, truth, probs, best.labels)
    spent += time.monotonic() - started  # the fusion is part of the budget
    if plan.test:
        final.update(measure_test(best, *load_split(plan.test, plan.columns, "test")))
    stopped = state.stopped
    if stopped.startswith("time"):
        stopped += (f": {state.step} of {trainer.total} planned steps, the learning rate decayed to zero over the "
                    "budget")
    minutes = (spent + state.seconds) / 60
    kept = "frozen encoder + fitted head" if summary.get("frozen") and state.best_metrics == summary[
        "frozen_metrics"] else "fine-tuning"
    summary.update(minutes=minutes, stopped=stopped, kept=kept,
                   notice=best.confidence.summary() if best.confidence is not None else "", examples=len(best.examples))
    best.card = model_card(summary, final)
    best.metrics = {**final, "training": {"minutes": round(minutes, 2), "steps": state.step,
                                          "planned_steps": trainer.total, "stopped": state.stopped or "completed",
                                          "precision": trainer.precision, "device": str(trainer.device),
                                          "frozen": summary.get("frozen"), "kept": kept}}
    if dist.is_main():
        save_model_dir(plan.out, best)
    dist.barrier()
    return final


def run(args: argparse.Namespace) -> int:
    with dist.session(args.device) as device:  # joins the process group under torchrun; nothing otherwise
        return _train(args, device)


def _train(args: argparse.Namespace, device: torch.device) -> int:
    torch.manual_seed(args.seed)
    _check_out(Path(args.out), resume=args.resume, overwrite=args.overwrite)
    shape = {n: getattr(args, n) for n in SHAPE_FLAGS if getattr(args, n, None) is not None}
    if shape:  # flags that cannot make a model are refused before any data is read
        check_shape(shape)
    texts, labels, vtexts, vlabels = load_train_valid(args.train, args.valid, columns=columns_of(args), seed=args.seed)
    label_set = _label_set(labels, vlabels, args.multi_label)
    plan = plan_of(args, device)
    out, recipe = plan.out, plan.recipe
    model, tokenizer, fresh = start_model(plan, label_set, texts)
    if dist.world() > 1:  # one dropout stream per rank: equal masks on every rank would correlate the noise
        torch.manual_seed(args.seed + 1 + dist.rank())
    ids = [e.ids for e in token_ids.encode(tokenizer, texts)]  # int32 arrays: no Encoding objects kept
    keep = [i for i, x in enumerate(ids) if len(x)]
    ids, labels, texts = [ids[i] for i in keep], [labels[i] for i in keep], [texts[i] for i in keep]
    y = _targets(labels, label_set)
    data = (texts, labels, vtexts, vlabels)
    parts = _ngram_stage(plan, label_set, data)
    budget = Budget(None if recipe.max_minutes is None else 60.0 * recipe.max_minutes, parts.seconds if parts else 0.0)
    md = ModelDir(model, tokenizer, list(label_set.names))
    frozen = _frozen(plan, md, ids, y, vtexts, vlabels, device, budget)
    if frozen is not None and frozen.valid_index is not None:  # the sample read is the validation split from here on
        vtexts, vlabels = [vtexts[i] for i in frozen.valid_index], [vlabels[i] for i in frozen.valid_index]
        data = (texts, labels, vtexts, vlabels)
        if parts is not None:
            parts = parts.subset(frozen.valid_index)
    spent = budget.ngrams + (frozen.seconds if frozen else 0.0)
    window = recipe.backprop_segments * model.config.segment_len
    tuning = replace(recipe, max_minutes=_tuning_minutes(plan, budget, frozen, [len(x) for x in ids], window))
    trainer = Trainer(md, tuning, train_ids=ids, train_y=y, valid_texts=vtexts, valid_labels=vlabels, out=out,
                      device=device, fresh=fresh, head_fit=frozen is not None,
                      reserve=frozen.valid_seconds if frozen else 0.0)
    if plan.resume and not trainer.load_checkpoint() and dist.is_main():
        print(f"txl train: no checkpoint in {out}; starting from scratch")
    summary = {"name": out.name, "train": str(plan.train), "n_train": len(ids), "n_valid": len(vtexts),
               "train_tokens": sum(map(len, ids)), "labels": list(label_set.names), "multi_label": label_set.multi_label,
               "label_counts": label_set.counts(labels),
               "recipe": {**asdict(recipe), "ngrams": plan.ngrams, **model.config.to_dict()},
               "machine": f"{platform.machine()} {device.type}, {torch.get_num_threads()} threads"
                          + (f" x {dist.world()} processes" if dist.world() > 1 else "")}

    def on_best(metrics):
        summary.update(minutes=(spent + trainer.state.seconds) / 60, stopped="")
        save_model_dir(out, ModelDir(trainer.model, tokenizer, list(label_set.names),
                                     model_card(summary, {"validation": metrics}), {"validation": metrics}))

    if frozen is not None and trainer.state.step == 0 and trainer.state.best_f1 < 0:
        summary["frozen"] = frozen.summary()
        trainer.start_from(frozen.metrics, on_best, frozen.probs())  # the model to beat, saved and checkpointed, then its record:
        write_atomic(checkpoint_dir(out) / FROZEN_FILE, json.dumps(asdict(frozen)))  # a resume skips the stage
    state = trainer.fit(on_best)
    summary["frozen"], summary["frozen_metrics"] = (frozen.summary(), frozen.metrics) if frozen else (None, None)
    final = _finish(plan, state, summary, trainer, parts, data, spent)
    if not dist.is_main():
        return 0
    line = ", ".join(f"{k} accuracy {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f}" for k, v in final.items()
                     if "accuracy" in v)
    print(f"txl train: saved {out} after {summary['minutes']:.1f} min, {state.step} fine-tuning steps "
          f"({state.stopped or 'completed'}); kept {summary['kept']}; {line}")
    return 0
