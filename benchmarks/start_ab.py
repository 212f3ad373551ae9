"""A quick A/B of `txl train` variants from the MiniLM start on a seeded subset of a data set's training file:
N training documents and V validation documents drawn disjointly (pandas `sample(frac=1, random_state=seed)`,
the first N, then the next V), one epoch each, the validation accuracy `txl train` reports at its end.

    python -m benchmarks.start_ab --dataset imdb --variants relative-256 segment-256 segment-512 \\
        [--train-docs 4000] [--valid-docs 2000] [--runs runs/start_ab]

Variants (VARIANTS): `--positions` relative or segment, at segment and memory length 256 or 512, and the default
(segment-256) at other peak learning rates (`segment-256-lr3e-5`, ...; the recipe's is 1e-4) and with the full
recipe's two epochs (`segment-256-2epochs`; every other variant runs one). The encoder alone
(`--ngrams off`): the figure is the encoder's validation accuracy. Rerunnable: a
variant whose model directory already has metrics is not retrained. About 22 minutes a variant at 256 on a
2-core AVX512-BF16 CPU for 4,000 imdb reviews (bf16 autocast), 42 on a 2-core AVX2-only one (float32).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.accuracy import DATASETS, MINILM

HERE = Path(__file__).resolve().parent

VARIANTS = {f"{p}-{n}": ["--positions", p, "--segment-len", str(n), "--mem-len", str(n)]
            for p in ("relative", "segment") for n in (256, 512)}
VARIANTS.update({f"segment-256-lr{lr}": [*VARIANTS["segment-256"], "--lr", lr] for lr in ("3e-5", "5e-5", "2e-4")})
VARIANTS["segment-256-2epochs"] = [*VARIANTS["segment-256"], "--epochs", "2"]  # the full recipe's schedule


def subset(data: Path, dataset: str, runs: Path, n_train: int, n_valid: int, seed: int) -> tuple[Path, Path]:
    frame = pd.read_csv(data / DATASETS[dataset][0])
    if "split" in frame:
        frame = frame[frame["split"] == "train"]
    frame = frame.sample(frac=1.0, random_state=seed)[["text", "label"]]
    train, valid = runs / "train.csv", runs / "valid.csv"
    frame.iloc[:n_train].to_csv(train, index=False)
    frame.iloc[n_train:n_train + n_valid].to_csv(valid, index=False)
    return train, valid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--dataset", default="imdb", choices=list(DATASETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-docs", type=int, default=4000)
    p.add_argument("--valid-docs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "start_ab")
    args = p.parse_args(argv)
    runs = args.runs / args.dataset
    runs.mkdir(parents=True, exist_ok=True)
    train, valid = subset(args.data, args.dataset, runs, args.train_docs, args.valid_docs, args.seed)
    recipe = [*MINILM, "--epochs", "1", "--ngrams", "off"]  # argparse keeps a repeated flag's last value
    for name in args.variants:
        out = runs / name
        if not (out / "metrics.json").is_file():
            subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--train", str(train), "--valid",
                            str(valid), "--out", str(out), *recipe, *VARIANTS[name]], check=True)
        metrics = json.loads((out / "metrics.json").read_text())
        print(f"{args.dataset} {name}: validation accuracy {100 * metrics['validation']['accuracy']:.2f} "
              f"({args.train_docs} training documents, 1 epoch, {metrics['training']['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
