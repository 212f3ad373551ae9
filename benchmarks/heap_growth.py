"""Resident memory of a long CPU training loop, by allocator setting: does it grow with the run?

    python benchmarks/heap_growth.py --allocator default|tuned|product [--steps 60] [--d-model 128]

Trains a small classifier (random weights, 2 layers, segment 256, memory 256, bf16 autocast, batches of 16)
on random token documents whose lengths follow a long-tailed (log-normal) law like real collections', so
each batch has other shapes; prints the current and peak resident memory and glibc's heap in use / free
every 15 steps. `default`: glibc's own settings; `tuned`: `tune_cpu_allocator` (freed memory kept in the
heap) without trimming; `product`: what `txl train` does, tuned and `release_free_memory` every minute.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

import pipelines.training.trainer as trainer_module
from pipelines.model.model_dir import ModelDir
from pipelines.training.trainer import Recipe, Trainer, bucketed_batches
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier
from train_speed import memory_mb


def rss_mb() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


class _Never:
    def __init__(self, seconds):
        pass

    def tick(self):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allocator", choices=["default", "tuned", "product"], default="product")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--d-model", type=int, default=128)
    args = p.parse_args()
    if args.allocator == "default":
        trainer_module.tune_cpu_allocator = lambda: False
    if args.allocator != "product":
        trainer_module.FreeMemoryEvery = _Never
    torch.manual_seed(0)
    rng = random.Random(0)
    d = args.d_model
    config = TXLConfig(vocab_size=1000, d_model=d, d_embed=d, n_head=d // 32, d_head=32, d_inner=4 * d, n_layer=2,
                       cutoffs=[], div_val=1, mem_len=256, clamp_len=512, same_length=False, segment_len=256,
                       num_labels=4, labels=list("abcd"), dropout=0.1, bidirectional=True)
    lengths = [int(min(20000, rng.lognormvariate(6.0, 1.0))) + 5 for _ in range(3000)]  # median 400, mean 670
    ids = [[rng.randrange(1000) for _ in range(n)] for n in lengths]
    y = torch.tensor([rng.randrange(4) for _ in lengths])
    tokenizer = Tokenizer(WordLevel({"a": 0}, unk_token="a"))  # unused: no validation here
    trainer = Trainer(ModelDir(TXLDocumentClassifier(config), tokenizer, list("abcd")),
                      Recipe(batch_size=16, lr=1e-4, precision="bf16"), train_ids=ids, train_y=y, valid_texts=[],
                      valid_labels=[], out="/tmp/heap_growth", device=torch.device("cpu"))
    trim = trainer_module.FreeMemoryEvery(60)
    started = time.time()
    for i, batch in enumerate(bucketed_batches(lengths, batch_size=16, seed=0)[:args.steps]):
        trainer.step(batch)
        trim.tick()  # as `Trainer.fit` does after each step
        if i % 15 == 14 or i == args.steps - 1:
            print(json.dumps({"allocator": args.allocator, "step": i + 1, "seconds": round(time.time() - started),
                              "rss_mb": rss_mb(), **memory_mb()}), flush=True)


if __name__ == "__main__":
    main()
