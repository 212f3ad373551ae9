"""Where the encoder's time goes: torch.profiler over the bench's classifier-sized encoder reading one document.

    python benchmarks/profile_encoder.py [--precision bf16] [--batch 8] [--tokens 4096] [--rows 14]

Prints the tokens/s of a plain reading (benchmarks/bench.py `encoder_rate`), then the operators sorted by
their own CPU time. Set OMP_WAIT_POLICY=PASSIVE to see the cost of sleeping threads (`pipelines/runtime/threads.py`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from txl_core import TXLConfig, TXLModel  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bf16", choices=bench.PRECISIONS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rows", type=int, default=14, help="operators to list")
    args = p.parse_args(argv)
    cfg = TXLConfig(**bench.FULL.model)
    torch.manual_seed(0)
    model = bench._fast_path(TXLModel(cfg).eval(), args.precision)
    ids = bench._ids(cfg, args.batch, args.tokens)
    rate = bench.encoder_rate(model, ids, precision=args.precision, budget=5)["tokens_per_s"]
    print(f"{args.precision}, batch {args.batch}, {args.tokens:,} tokens: {rate:,.0f} tokens/s")
    with torch.inference_mode(), bench._autocast(args.precision), profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.read(model, ids, seg=cfg.segment_len, budget=100)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
