"""A/B of the encoder's speed between this checkout and another commit, alternated in fresh processes.

    python -m benchmarks.encoder_ab --against HEAD~1 [--precision bf16] [--batch 8] [--tokens 4096] [--rounds 3]

The other commit is checked out into a temporary `git worktree`; each round runs one reading of the bench's
classifier-sized encoder (benchmarks/bench.py: `encoder_rate`, same seed, same weights) in each tree, one
after the other, so that a host whose speed drifts affects both alike. Prints every reading and the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, sys, torch
from benchmarks import bench  # the tree's own: the worker runs in it (a namespace package in older trees)
from txl_core import TXLConfig, TXLModel
precision, batch, tokens, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cfg = TXLConfig(**bench.FULL.model)
torch.manual_seed(0)
model = bench._fast_path(TXLModel(cfg).eval(), precision)
print(json.dumps(bench.encoder_rate(model, bench._ids(cfg, batch, tokens), precision=precision, budget=budget)))
"""


def reading(tree: Path, args) -> float:
    env = os.environ | {"PYTHONPATH": str(tree)}
    env.pop("OMP_WAIT_POLICY", None)
    if args.wait_policy != "default":  # libgomp's default: spin a while, then sleep (the CLI's on an idle machine)
        env["OMP_WAIT_POLICY"] = args.wait_policy
    out = subprocess.run([sys.executable, "-c", WORKER, args.precision, str(args.batch), str(args.tokens),
                          str(args.budget)], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="the other commit (e.g. HEAD~1)")
    p.add_argument("--precision", default="bf16", choices=["float32", "bf16", "int8"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--budget", type=float, default=20.0, help="seconds per reading")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the readings: PASSIVE beside other busy processes, default on an idle "
                        "machine (what the CLI chooses there)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), args.against], cwd=ROOT, check=True)
        try:
            here, there = [], []
            for r in range(args.rounds):
                here.append(reading(ROOT, args))
                there.append(reading(other, args))
                print(f"round {r + 1}: this checkout {here[-1]:,.0f}, {args.against} {there[-1]:,.0f} tokens/s",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=True)
    a, b = statistics.median(here), statistics.median(there)
    print(f"{args.precision}, batch {args.batch}, {args.tokens:,} tokens, {os.cpu_count()} CPUs: this checkout "
          f"{a:,.0f}, {args.against} {b:,.0f} tokens/s (median of {args.rounds}): {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
