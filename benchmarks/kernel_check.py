"""The bf16 fast path on a trained model, with and without the compiled attention kernel and the packed linear
layers, against float32: test accuracy, labels changed, probability differences, seconds.

    python benchmarks/kernel_check.py --model runs/accuracy/bbc_news.minilm \\
        --data ../shared/data/bbc_news/bbc_news.csv.xz [--float32 runs/accuracy/bbc_news.minilm.eval]

Runs `txl evaluate --precision bf16` twice in fresh processes (TXL_FUSED / TXL_PACKED 1, then 0) and, unless
--float32 names an earlier float32 evaluation's folder, `txl evaluate --precision float32` too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def evaluate(model: str, data: str, out: Path, precision: str, on: bool) -> float:
    env = os.environ | {"TXL_FUSED": "1" if on else "0", "TXL_PACKED": "1" if on else "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", "--model", model, "--data", data, "--out",
                    str(out), "--precision", precision], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--float32", help="folder of an earlier `txl evaluate --precision float32` of the same data")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        if args.float32:
            runs["float32"] = (Path(args.float32), None)
        else:
            out = Path(tmp) / "float32"
            runs["float32"] = (out, evaluate(args.model, args.data, out, "float32", False))
        for name, on in (("bf16, kernel + packed", True), ("bf16, torch ops", False)):
            out = Path(tmp) / ("on" if on else "off")
            runs[name] = (out, evaluate(args.model, args.data, out, "bf16", on))
        ref = pd.read_csv(runs["float32"][0] / "predictions.csv")
        probs = [c for c in ref.columns if c.startswith("prob_")]
        for name, (out, seconds) in runs.items():
            metrics = json.loads((out / "metrics.json").read_text())
            pred = pd.read_csv(out / "predictions.csv")
            diff = (pred[probs] - ref[probs]).abs()
            print(f"{name:22} accuracy {100 * metrics['accuracy']:.2f}  labels changed "
                  f"{int((pred.predicted_label != ref.predicted_label).sum())}  max |p - float32| "
                  f"{diff.max().max():.4f}  mean {diff.mean().mean():.2e}  "
                  f"{'' if seconds is None else f'{seconds:.1f} s'}  ({metrics['n_documents']} documents)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
