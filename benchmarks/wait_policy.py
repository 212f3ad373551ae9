"""The encoder's speed with OpenMP threads that sleep (OMP_WAIT_POLICY=PASSIVE) against threads that spin
(libgomp's default), on an idle machine and beside processes that keep cores busy: the measurements behind
`pipelines/runtime/threads.py`.

    python -m benchmarks.wait_policy [--busy 0 1 2] [--rounds 2] [--budget 4]

Each reading is a fresh process (libgomp reads the policy once) running the bench's classifier-sized encoder
(benchmarks/bench.py `encoder_rate`, 4k-token documents, batch 1 and 8, float32 / bf16 / int8); the two
policies alternate within each round. `--busy N` starts N single-core busy loops beside the readings (0: the
machine as it is; run it on an idle machine). Prints every reading, then the median ratio spin / sleep.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {"sleep": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {}}

WORKER = """
import json, sys, torch
from benchmarks import bench
from txl_core import TXLConfig, TXLModel
budget = float(sys.argv[1])
cfg = TXLConfig(**bench.FULL.model)
torch.manual_seed(0)
out = {}
for precision in ("float32", "bf16", "int8"):
    model = bench._fast_path(TXLModel(cfg).eval(), precision)
    for batch in (1, 8):
        ids = bench._ids(cfg, batch, 4096)
        out[f"{precision} b{batch}"] = bench.encoder_rate(model, ids, precision=precision, budget=budget)["tokens_per_s"]
print(json.dumps(out))
"""


def reading(policy: str, budget: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= POLICIES[policy] | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(budget)], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(busy: int, rounds: int, budget: float) -> None:
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        got = {p: [] for p in POLICIES}
        for r in range(rounds):
            for policy in POLICIES:
                got[policy].append(reading(policy, budget))
                print(f"busy loops {busy}, round {r + 1}, {policy}: "
                      + ", ".join(f"{k} {v:,.0f}" for k, v in got[policy][-1].items()), flush=True)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    print(f"busy loops {busy}, spin / sleep (median tokens/s): " + ", ".join(
        f"{k} {statistics.median(x[k] for x in got['spin']) / statistics.median(x[k] for x in got['sleep']):.2f}x"
        for k in got["sleep"][0]), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="single-core busy loops beside the readings")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget", type=float, default=4.0, help="seconds per reading")
    args = p.parse_args(argv)
    for busy in args.busy:
        measure(busy, args.rounds, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
