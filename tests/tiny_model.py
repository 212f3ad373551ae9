"""A tiny classifier directory built in a second (untrained weights, a real tokenizer): for tests of the
flows around a model, not of its accuracy."""
from __future__ import annotations

from pathlib import Path

import torch

from pipelines.data.bpe_tokenizer import train_tokenizer
from pipelines.model.model_dir import ModelDir, save_model_dir
from tests.synth import make_corpus
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier


def make_model_dir(path: Path, *, labels=("politics", "sport", "tech"), seed: int = 0, card: str = "# tiny\n") -> Path:
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(make_corpus(60, seed=seed)["text"], vocab_size=300)
    config = TXLConfig(vocab_size=tokenizer.get_vocab_size(), d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=32,
                       n_layer=1, cutoffs=[], div_val=1, mem_len=16, clamp_len=32, same_length=False,
                       segment_len=16, num_labels=len(labels), labels=list(labels), dropout=0.0)
    metrics = {"test": {"n_documents": 3, "accuracy": 1.0, "macro_f1": 1.0, "micro_f1": 1.0, "labels": list(labels),
                        "confusion_matrix": [[1 if i == j else 0 for j in range(len(labels))] for i in range(len(labels))]}}
    save_model_dir(path, ModelDir(TXLDocumentClassifier(config), tokenizer, list(labels), card, metrics))
    return path
