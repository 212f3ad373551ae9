"""The model a training run starts from: an interrupted run's checkpoint, a pre-trained start (`--init`), or
random weights with a tokenizer trained on the data."""
from __future__ import annotations

import json

from pipelines.data.bpe_tokenizer import train_tokenizer
from pipelines.data.labels import LabelSet
from pipelines.data.word_tokenizer import load_tokenizer
from pipelines.data.writers import write_atomic
from pipelines.errors import UserError
from pipelines.runtime import distributed as dist
from pipelines.training.plan import ARCH_DEFAULTS, TrainPlan, architecture
from pipelines.training.resume import checkpoint_dir
from pipelines.training.starts import load_start
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

FRESH = "fresh.json"  # in the checkpoint folder: the names of the parameters --init did not supply


def _config(arch: dict, tokenizer, label_set: LabelSet) -> TXLConfig:
    """A new model's config from the resolved model flags."""
    d_head = max(1, arch["d_model"] // arch["n_head"])
    return TXLConfig(vocab_size=tokenizer.get_vocab_size(), d_model=arch["d_model"], d_embed=arch["d_model"],
                     n_head=arch["n_head"], d_head=d_head, d_inner=arch["d_inner"], n_layer=arch["n_layer"],
                     cutoffs=[], div_val=1, mem_len=arch["mem_len"], clamp_len=arch["mem_len"] + arch["segment_len"],
                     same_length=False, dropout=arch["dropout"], num_labels=len(label_set.names),
                     labels=list(label_set.names), multi_label=label_set.multi_label, pooling=arch["pooling"],
                     segment_len=arch["segment_len"], bidirectional=arch["attention"] == "bidirectional")


def _resumed(plan: TrainPlan, label_set: LabelSet):
    """The interrupted run's model, whichever model flags this call repeats; None when there is none."""
    ck = checkpoint_dir(plan.out)
    if not (plan.resume and (ck / "config.json").is_file() and (ck / "tokenizer.json").is_file()):
        return None
    config = TXLConfig.load(ck)
    if list(config.labels) != list(label_set.names):
        raise UserError(f"the checkpoint in {ck} was trained on labels {config.labels[:5]}, not this data's; "
                        "pass the same --train, or another --out")
    _check_flags_repeat(plan, config, ck)
    fresh = json.loads((ck / FRESH).read_text()) if (ck / FRESH).is_file() else []
    return TXLDocumentClassifier(config), load_tokenizer(ck / "tokenizer.json"), fresh


def _check_flags_repeat(plan: TrainPlan, config: TXLConfig, ck) -> None:
    """A model flag given again with --resume must be the checkpoint's: the run continues as it started, and a
    changed flag would be silently ignored. (--vocab-size is left out: a small corpus yields fewer tokens.)"""
    saved = {"d_model": config.d_model, "n_layer": config.n_layer, "n_head": config.n_head, "d_inner": config.d_inner,
             "segment_len": config.segment_len, "mem_len": config.mem_len, "dropout": config.dropout,
             "pooling": config.pooling, "attention": "bidirectional" if config.bidirectional else "causal"}
    changed = [f"--{name.replace('_', '-')} {saved[name]}, not {value}" for name, value in plan.arch.items()
               if name in saved and value != saved[name]]
    if changed:
        raise UserError(f"the run in {ck.parent} was started with {'; '.join(changed)}; --resume continues it as "
                        "it started: repeat its flags, or train into another --out")


def _from_start(plan: TrainPlan, label_set: LabelSet):
    """The pre-trained encoder of `plan.init` under a new head; fresh = what the start did not supply."""
    start = load_start(plan.init, segment_len=plan.arch.get("segment_len", ARCH_DEFAULTS["segment_len"]),
                       positions=plan.positions)
    arch = architecture(plan.arch, start.config)
    if arch["segment_len"] > start.config.get("segment_positions", 0) > 0:
        raise UserError(f"--segment-len {arch['segment_len']} exceeds the {start.config['segment_positions']} "
                        f"positions of --init {plan.init}; pass a smaller --segment-len or --positions relative")
    bidirectional = arch["attention"] == "bidirectional"
    config = TXLConfig.from_dict(start.config | {
        "num_labels": len(label_set.names), "labels": list(label_set.names), "multi_label": label_set.multi_label,
        "pooling": arch["pooling"], "segment_len": arch["segment_len"], "mem_len": arch["mem_len"],
        "dropout": arch["dropout"], "clamp_len": start.config.get("clamp_len", arch["mem_len"] + arch["segment_len"]),
        "bidirectional": bidirectional} | ({"same_length": False} if bidirectional else {}))
    model = TXLDocumentClassifier(config)
    model.transformer.load_state_dict(start.encoder)
    supplied = {"transformer." + k for k in start.encoder if k not in start.fresh}
    return model, start.tokenizer, [n for n, _ in model.named_parameters() if n not in supplied]


def initial_model(plan: TrainPlan, label_set: LabelSet, texts: list[str]):
    """(model, tokenizer, names of the parameters --init did not supply, for `Recipe.fresh_lr`)."""
    resumed = _resumed(plan, label_set)
    if resumed is not None:
        return resumed
    if plan.init:
        return _from_start(plan, label_set)
    arch = architecture(plan.arch, None)
    ck = checkpoint_dir(plan.out)
    if plan.resume and (ck / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(ck / "tokenizer.json")
    else:
        tokenizer = train_tokenizer(texts, vocab_size=arch["vocab_size"])
    return TXLDocumentClassifier(_config(arch, tokenizer, label_set)), tokenizer, []  # nothing pre-trained


def start_model(plan: TrainPlan, label_set: LabelSet, texts: list[str]):
    """`initial_model` made once, its tokenizer saved in the checkpoint folder.

    Under torchrun rank 0 makes them (tokenizers trained apart need not agree); the other ranks build the same
    shape from its config and read its tokenizer, and DDP gives them rank 0's weights.
    """
    ck = checkpoint_dir(plan.out)
    if dist.is_main():
        model, tokenizer, fresh = initial_model(plan, label_set, texts)
        write_atomic(ck / "tokenizer.json", tokenizer.to_str())
        write_atomic(ck / FRESH, json.dumps(fresh))  # a resumed run groups the optimiser's parameters alike
    config, fresh = dist.all_gather_object((model.config.to_dict(), fresh) if dist.is_main() else None)[0]
    if not dist.is_main():  # the gather is also a barrier
        model, tokenizer = TXLDocumentClassifier(TXLConfig.from_dict(config)), load_tokenizer(ck / "tokenizer.json")
    return model, tokenizer, fresh
