"""Fine-tuning speed of the default start (all-MiniLM-L6-v2, bidirectional, bf16 autocast on a CPU with bf16
units, batches of 16 documents, the first of a shared data set, bbc_news by default), the training steps
alone: no validation, no data loading. Tokens/s counts every document token a step reads.

    python -m benchmarks.train_speed [--data ../shared/data] [--dataset ungdc] [--steps 4] [--batch-size 16]
        [--precision float32] [--backprop-segments 0] [--dropatt 0.1] [--profile]

Prints one JSON line (tokens/s over the timed steps, after one warm-up step; peak resident memory, and on glibc
how much of the heap is in use vs kept free by the allocator setting); `--profile` also prints torch's
operator table of two steps. Needs the `minilm` extra and `../shared/data/bbc_news`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pipelines.data.token_ids import encode
from pipelines.model.model_dir import ModelDir
from pipelines.runtime.device import cpu_has_native_bf16
from pipelines.training.recipe import Recipe
from pipelines.training.starts import load_start
from pipelines.training.trainer import Trainer
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

HERE = Path(__file__).resolve().parent


class _MallInfo2(ctypes.Structure):  # <malloc.h> struct mallinfo2, glibc 2.33+
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def memory_mb() -> dict:
    """Peak RSS; on glibc also the heap's bytes in use and free (freed but kept), in MB."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (AttributeError, OSError):  # not glibc, or older than 2.33
        return out
    return out | {"heap_in_use_mb": round((info.uordblks + info.hblkhd) / 2**20),
                  "heap_free_mb": round(info.fordblks / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dropatt", type=float, default=None, help="attention dropout (default: the start's, 0.1)")
    p.add_argument("--precision", choices=["auto", "bf16", "float32"], default="auto",
                   help="auto: bf16 autocast on a CPU with bf16 units, else float32 (as `txl train`)")
    p.add_argument("--dataset", default="bbc_news", help="a folder of --data (its first .csv.xz); e.g. ungdc, oyez")
    p.add_argument("--backprop-segments", type=int, default=Recipe.backprop_segments,
                   help="as `txl train --backprop-segments` (0: every segment, the exact two-pass gradient)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    start = load_start("minilm", segment_len=256)
    overrides = {"num_labels": 5, "labels": list("abcde"), "segment_len": 256, "mem_len": 256,
                 "bidirectional": True, "same_length": False}
    if args.dropatt is not None:
        overrides["dropatt"] = args.dropatt
    model = TXLDocumentClassifier(TXLConfig.from_dict(start.config | overrides))
    model.transformer.load_state_dict(start.encoder)
    n_docs = args.batch_size * (args.steps + 1)
    table = sorted((args.data / args.dataset).glob("*.csv*"))[0]
    texts = pd.read_csv(table)["text"].head(n_docs).tolist()
    ids = [e.ids for e in encode(start.tokenizer, texts)]
    torch.manual_seed(0)
    precision = args.precision if args.precision != "auto" else "bf16" if cpu_has_native_bf16() else "float32"
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(ModelDir(model, start.tokenizer, list("abcde")),
                          Recipe(precision=precision, batch_size=args.batch_size,
                                 backprop_segments=args.backprop_segments), train_ids=ids,
                          train_y=torch.randint(0, 5, (len(ids),)), valid_texts=[], valid_labels=[], out=Path(out),
                          device=torch.device("cpu"))
        batches = [list(range(i, i + args.batch_size)) for i in range(0, n_docs, args.batch_size)]
        trainer.step(batches[0])  # warm-up
        started, tokens, faults = time.perf_counter(), 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for batch in batches[1:]:
            trainer.step(batch)
            tokens += sum(len(ids[i]) for i in batch)
        seconds = time.perf_counter() - started
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps({"dataset": args.dataset, "backprop_segments": args.backprop_segments,
                          "precision": precision, "threads": torch.get_num_threads(), "steps": args.steps,
                          "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                          "page_faults_per_step": round(faults / args.steps),
                          "dropatt": model.config.dropatt} | memory_mb()))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[1:3]:
                    trainer.step(batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=40,
                                            max_shapes_column_width=90))


if __name__ == "__main__":
    main()
