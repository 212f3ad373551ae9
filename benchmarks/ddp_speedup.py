"""Data-parallel speed-up of `txl train` on this machine: 1 process x 2 threads against 2 processes x 1 thread
(torchrun, gloo), with the same documents, global batch, seed and steps. Prints a markdown table.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.ddp_speedup [--data FILE] [--docs 240] [--repeats 2]

Tokens/s = the training documents' tokens / the training loop's seconds (`checkpoint/state.json`: every step,
the one validation of 16 documents and the checkpoint; not the start-up or the tokenizer). The runs alternate
so that a change in the machine's load hits both; the 1-minute load average is printed beside each.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bbc_news" / "bbc_news.csv.xz"
RUNS = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def _subset(src: Path, work: Path, n_docs: int) -> tuple[Path, Path]:
    """`n_docs` training documents and 16 more for validation (a seeded shuffle), as two CSV files."""
    frame = pd.read_csv(src)
    if "split" in frame:
        frame = frame[frame["split"] == "train"]
    frame = frame.sample(frac=1.0, random_state=0)  # files are often sorted by label
    train, valid = work / "train.csv", work / "valid.csv"
    frame.iloc[:n_docs][["text", "label"]].to_csv(train, index=False)
    frame.iloc[n_docs:n_docs + 16][["text", "label"]].to_csv(valid, index=False)
    return train, valid


def run_once(procs: int, threads: int, train: Path, valid: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    args = ["train", "--train", str(train), "--valid", str(valid), "--out", str(out), "--epochs", "1", "--init", "none"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    launch = [sys.executable, *torchrun, "-m", "pipelines.cli"]
    load = os.getloadavg()[0]
    subprocess.run([*launch, *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    card = (out / "README.md").read_text()
    tokens = int(re.search(r"documents, ([\d,]+) tokens\)", card).group(1).replace(",", ""))
    return {"tokens": tokens, "steps": state["step"], "seconds": state["seconds"],
            "tokens_per_s": tokens / state["seconds"], "load": [load, os.getloadavg()[0]]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="a labelled file (default: bbc_news from ../shared/data)")
    p.add_argument("--docs", type=int, default=240, help="training documents (one epoch, global batch 16)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out-json", help="also write every run as JSON here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train, valid = _subset(Path(args.data), Path(tmp), args.docs)
        for r in range(args.repeats):
            for name, (procs, threads) in RUNS.items():
                rows.append({"run": name, **run_once(procs, threads, train, valid, Path(tmp) / f"m{r}{procs}")})
                print(json.dumps(rows[-1]), file=sys.stderr)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"{os.cpu_count()} cores, {args.docs} documents ({rows[0]['tokens']:,} tokens), {rows[0]['steps']} steps\n")
    print("| run | tokens/s | seconds | load (1 min) before, after |\n|---|---:|---:|---|")
    for row in rows:
        print(f"| {row['run']} | {row['tokens_per_s']:,.0f} | {row['seconds']:.1f} | "
              f"{row['load'][0]:.1f}, {row['load'][1]:.1f} |")
    best = {name: max(r["tokens_per_s"] for r in rows if r["run"] == name) for name in RUNS}
    one, two = best.values()
    print(f"\nspeed-up of 2 processes (best runs): {two / one:.2f}x")


if __name__ == "__main__":
    main()
