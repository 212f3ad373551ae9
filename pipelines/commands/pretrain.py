"""Pre-train the Transformer-XL language model on unlabelled text (or measure a language model's perplexity).

The texts (plain text files, one paragraph per line, or a text column of tables) become one stream of
byte-level BPE tokens with `<eos>` after each document, read as B parallel streams in segments of
--segment-len with --mem-len steps of memory carried from one segment to the next (Dai et al. 2019). The
held-out perplexity (--valid, or the stream's last 2%) goes into the model card. The output directory is a
`TXLLMHeadModel` that `txl train --init DIR` fine-tunes into a classifier. `--resume` continues exactly
(weights, optimizer, stream position and the memory itself). `--eval-only --init DIR --text PATH` only
measures perplexity, with --eval-mem-len steps of memory.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

from pipelines.commands.train import FLAG_BOUNDS
from pipelines.data.bpe_tokenizer import train_tokenizer
from pipelines.data.decoding import not_prose
from pipelines.data.lm_stream import (
    EOS,
    count_words,
    encode_stream,
    perplexity,
    read_documents,
)
from pipelines.data.word_tokenizer import load_tokenizer
from pipelines.errors import DataWarning, UserError, bounded
from pipelines.model.model_dir import load_lm_dir
from pipelines.runtime.device import resolve_device
from pipelines.runtime.memory import tune_cpu_allocator
from pipelines.training.lm_trainer import LMRecipe, LMTrainer
from pipelines.training.resume import checkpoint_dir
from txl_core import TXLConfig, TXLLMHeadModel

CLASSIFIER = ("num_labels", "labels", "multi_label", "pooling", "classifier_dropout")  # not an LM's settings
HELD_OUT = 0.02  # of the stream, when no --valid is given
ARCH = {"vocab_size": 16000, "d_model": 256, "n_layer": 4, "n_head": 4, "d_inner": 1024, "segment_len": 128,
        "mem_len": 128, "dropout": 0.1}
SHAPE = ("vocab_size", "d_model", "n_layer", "n_head", "d_inner")
# Bounds of the numeric flags: a value outside is a one-line usage error (warmup is in steps here).
BOUNDS = FLAG_BOUNDS | {"warmup": dict(at_least=0), "max_steps": dict(at_least=1), "eval_mem_len": dict(at_least=0),
                        "eval_segment_len": dict(at_least=1), "eval_batch_size": dict(at_least=1),
                        "clamp_len": dict(at_least=0)}


def _kind(name: str, kind: type):
    return bounded(kind, **BOUNDS[name]) if name in BOUNDS else kind


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", required=True, help="text files (.txt/.tokens, may be .gz/.xz/.zst/.bz2; "
                   "one document or paragraph per line) or tables (csv/tsv/jsonl/parquet) with --text-column")
    p.add_argument("--out", help="model directory to write (not needed with --eval-only)")
    p.add_argument("--valid", nargs="+", help="held-out text for perplexity (default: the last 2%% of --text)")
    p.add_argument("--text-column", default="text", help="the text column of tables")
    p.add_argument("--init", help="a `txl pretrain` directory: continue pre-training it (e.g. on a task's own "
                   "texts), or the model measured by --eval-only")
    p.add_argument("--tokenizer", help="a tokenizer.json to use instead of training one on --text")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--eval-only", action="store_true", help="only measure --init's perplexity on --text")
    p.add_argument("--eval-mem-len", type=_kind("eval_mem_len", int),
                   help="memory when measuring perplexity (default: --mem-len)")
    p.add_argument("--eval-segment-len", type=_kind("eval_segment_len", int),
                   help="segment length when measuring (default: --segment-len)")
    p.add_argument("--eval-batch-size", type=_kind("eval_batch_size", int), default=8,
                   help="parallel streams when measuring")
    p.add_argument("--clamp-len", type=_kind("clamp_len", int), help="relative distances beyond this share one "
                   "position embedding (default: segment + memory, the longest seen in training; 0: no clamp)")
    for name, default in ARCH.items():
        p.add_argument("--" + name.replace("_", "-"), type=_kind(name, type(default)), default=None,
                       help=f"model: {name} (default {default}, or --init's)")
    for name, default in LMRecipe.__dataclass_fields__.items():
        if name not in ("max_minutes", "max_steps"):
            p.add_argument("--" + name.replace("_", "-"), type=_kind(name, type(default.default)),
                           default=default.default,
                           help=f"recipe: {name} (default {default.default})")
    p.add_argument("--max-steps", type=_kind("max_steps", int), help="optimizer steps, the length of the schedule (default: --epochs)")
    p.add_argument("--max-minutes", type=_kind("max_minutes", float), help="stop gracefully after this many minutes (resumable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def adaptive_softmax(vocab_size: int) -> tuple[list[int], int]:
    """(cutoffs, div_val). BPE ids come in merge order, roughly by frequency, so the first 2,000 ids cover
    most of the text (measured on WikiText-2: 77% of tokens with an 8k vocabulary, 71% with 16k); only
    the rarer rest pays for tail clusters, of widths d/2 and d/4. A vocabulary of a few thousand tokens
    gains nothing and takes a full softmax."""
    if vocab_size <= 4000:
        return [], 1
    return [c for c in (2000, 6000, 20000) if c < vocab_size - 500], 2


def lm_config(args, vocab_size: int) -> TXLConfig:
    cutoffs, div_val = adaptive_softmax(vocab_size)
    if args.d_model % args.n_head:
        raise UserError(f"--d-model {args.d_model} must be a multiple of --n-head {args.n_head}")
    clamp = args.segment_len + args.mem_len if args.clamp_len is None else args.clamp_len
    return TXLConfig(vocab_size=vocab_size, d_model=args.d_model, d_embed=args.d_model, n_head=args.n_head,
                     d_head=args.d_model // args.n_head, d_inner=args.d_inner, n_layer=args.n_layer,
                     cutoffs=cutoffs, div_val=div_val, mem_len=args.mem_len, clamp_len=clamp, same_length=False,
                     dropout=args.dropout, dropatt=0.0, segment_len=args.segment_len, eos_token_id=EOS,
                     pad_token_id=0)


def _filled(args, start: TXLConfig | None) -> argparse.Namespace:
    """The options with every unset model flag resolved (the start's value, else the default): a new object,
    made once; the parsed `args` are never rewritten."""
    return argparse.Namespace(**{**vars(args), **{name: getattr(start, name) if start is not None else default
                                                  for name, default in ARCH.items() if getattr(args, name) is None}})


def _model_and_tokenizer(args, docs: list[str]):
    """(model, tokenizer, resumed, the resolved options): from the checkpoint (--resume), from --init, or new;
    the checkpoint's settings win over flags."""
    ck = checkpoint_dir(Path(args.out))
    if args.resume and (ck / "state.json").is_file():
        config = TXLConfig.load(ck)
        return TXLLMHeadModel(config), load_tokenizer(ck / "tokenizer.json"), True, _filled(args, config)
    if args.init:
        given = [n for n in SHAPE if getattr(args, n) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} cannot be changed when continuing from --init "
                            "(the pre-trained weights fix the model's shape)")
        lm = load_lm_dir(args.init)
        args = _filled(args, lm.model.config)
        cfg = lm.model.config  # how it reads may change: these settings own no weights
        cfg.segment_len, cfg.mem_len, cfg.dropout = args.segment_len, args.mem_len, args.dropout
        cfg.clamp_len = args.segment_len + args.mem_len if args.clamp_len is None else args.clamp_len
        return lm.model, lm.tokenizer, False, args
    args = _filled(args, None)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else train_tokenizer(docs, vocab_size=args.vocab_size)
    return TXLLMHeadModel(lm_config(args, tokenizer.get_vocab_size())), tokenizer, False, args


def _streams(args, tokenizer, docs: list[str]):
    """Training stream, held-out stream and the held-out word count."""
    stream = encode_stream(tokenizer, docs)
    if args.valid:
        vdocs = read_documents(args.valid, text_column=args.text_column)
        held = encode_stream(tokenizer, vdocs)
        if held.numel() < 3:
            raise UserError(f"the held-out text ({', '.join(args.valid)}) is too short: {held.numel()} tokens")
        return stream, held, count_words(vdocs)
    cut = stream.numel() - max(args.segment_len + 1, int(HELD_OUT * stream.numel()))
    words = count_words(docs) * (stream.numel() - cut) / max(1, stream.numel())  # the words of the held-out part
    return stream[:cut], stream[cut:], words


def _check_length(train: torch.Tensor, args) -> None:
    need = args.batch_size * (args.segment_len + 1)
    if train.numel() < need:
        raise UserError(f"the text is too short: {train.numel()} training tokens for --batch-size "
                        f"{args.batch_size} x --segment-len {args.segment_len} (needs at least {need}); "
                        "give more text or smaller settings")


def _machine(device: torch.device) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return f"{cpu or platform.machine()} ({device.type}, {torch.get_num_threads()} threads)"


def model_card(summary: dict) -> str:
    m = summary["metrics"]
    return "\n".join([
        f"# {summary['name']}", "", "Transformer-XL language model pre-trained with `txl pretrain`; fine-tune it "
        "into a classifier with `txl train --init DIR`.", "", "## Data", "",
        f"- text: {', '.join(f'`{t}`' for t in summary['text'])} ({summary['train_tokens']:,} training tokens)",
        f"- held-out: {summary['held_out']} ({m['held_out_tokens']:,} tokens)", "", "## Recipe", "", "```json",
        json.dumps(summary["recipe"], indent=1, sort_keys=True), "```", "",
        f"Trained {m['steps']} steps ({m['train_tokens_seen']:,} tokens) in {m['minutes']:.1f} min on "
        f"{summary['machine']} ({m['stopped']}).", "", "## Held-out perplexity", "",
        f"{_ppl(m['held_out_ppl'])} per BPE token, {_ppl(m['held_out_word_ppl'])} per word (whitespace words and "
        f"one `<eos>` per line), read in segments of {m['eval_segment_len']} with {m['eval_mem_len']} steps of memory.", ""])


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"


def _measure(args, model: TXLLMHeadModel, held: torch.Tensor, held_words: float) -> dict:
    """Held-out perplexity, per token and per word (the stream's total NLL over its words)."""
    mem_len = model.config.mem_len if args.eval_mem_len is None else args.eval_mem_len
    segment_len = args.eval_segment_len or model.config.segment_len
    result = perplexity(model, held, segment_len=segment_len, mem_len=mem_len, batch_size=args.eval_batch_size,
                        clamp_len=args.clamp_len)
    word_ppl = math.exp(min(result.nll / result.tokens * held.numel() / held_words, 700))  # text that is no
    # language (base64, random characters) has words of many tokens: its perplexity overflows a float past this
    return {"held_out_ppl": result.ppl, "held_out_word_ppl": word_ppl, "held_out_tokens": result.tokens,
            "eval_mem_len": mem_len, "eval_segment_len": segment_len}


def _warn_if_not_prose(args, docs: list[str], consequence: str) -> None:
    if why := not_prose("\n".join(itertools.islice(docs, 2000))):
        warnings.warn(f"{', '.join(map(str, args.text))} does not look like language: {why}; {consequence}",
                      DataWarning, stacklevel=2)


def _eval_only(args) -> int:
    """Print one JSON line: perplexity per token and per word of --text, read with --eval-mem-len."""
    if not args.init:
        raise UserError("--eval-only needs --init DIR, the language model to measure")
    lm = load_lm_dir(args.init)
    docs = read_documents(args.text, text_column=args.text_column)
    _warn_if_not_prose(args, docs, "its perplexity says nothing about text")
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    started = time.time()
    m = _measure(args, lm.model.to(device), encode_stream(lm.tokenizer, docs), count_words(docs))
    print(json.dumps({"ppl": m["held_out_ppl"], "word_ppl": m["held_out_word_ppl"], "tokens": m["held_out_tokens"],
                      "words": count_words(docs), "mem_len": m["eval_mem_len"], "segment_len": m["eval_segment_len"],
                      "seconds": round(time.time() - started, 1)}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.eval_only:
        return _eval_only(args)
    if not args.out:
        raise UserError("--out DIR is required (the model directory to write)")
    out = Path(args.out)
    if (out / "config.json").exists() and not args.resume:
        raise UserError(f"{out} already holds a model; choose another --out or pass --resume")
    torch.manual_seed(args.seed)
    docs = read_documents(args.text, text_column=args.text_column)
    _warn_if_not_prose(args, docs, "a language model trained on it learns nothing that carries over to text")
    model, tokenizer, resumed, args = _model_and_tokenizer(args, docs)
    train, held, held_words = _streams(args, tokenizer, docs)
    _check_length(train, args)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    recipe = LMRecipe(**{name: getattr(args, name) for name in LMRecipe.__dataclass_fields__})
    trainer = LMTrainer(model, recipe, train=train, out=out, device=device)
    if resumed:
        trainer.load_checkpoint()
    else:
        trainer.start(tokenizer)
    state = trainer.fit()
    metrics = _measure(args, model, held, held_words) | {
        "steps": state.step, "train_tokens_seen": state.tokens, "train_tokens": train.numel(),
        "params": sum(p.numel() for p in model.parameters()), "minutes": round(state.seconds / 60, 2),
        "train_loss": state.loss, "stopped": state.stopped or "completed"}
    summary = {"name": out.name, "text": list(args.text), "train_tokens": train.numel(), "metrics": metrics,
               "held_out": ", ".join(args.valid) if args.valid else f"the last {HELD_OUT:.0%} of the stream",
               "recipe": {**vars(recipe), **{k: v for k, v in model.config.to_dict().items() if k not in CLASSIFIER}},
               "machine": _machine(device)}
    model.save_pretrained(out, extra_files={"tokenizer.json": tokenizer.to_str(), "README.md": model_card(summary),
                                            "metrics.json": json.dumps(metrics, indent=1, sort_keys=True) + "\n"})
    print(f"txl pretrain: saved {out} after {state.step} steps, {state.seconds / 60:.1f} min "
          f"({metrics['stopped']}); held-out perplexity {_ppl(metrics['held_out_ppl'])} per token, "
          f"{_ppl(metrics['held_out_word_ppl'])} per word")
    return 0
