"""The long-document table: ungdc and oyez (and stand-ins sampled from ../shared: SAMPLES), the default recipe
against TF-IDF and against reading the start only.

    python -m benchmarks.long_docs --dataset ungdc --variants default tfidf tfidf512 [--minutes 30]

Variants, each through the product's own commands on the data set's train / test split:
  default    `txl train --max-minutes M` (the default recipe) + `txl evaluate` on the test split
  first512   the same recipe on documents cut to their first 512 words (train and test alike)
  mem0       the same recipe with `--mem-len 0`: segments read independently, then pooled
  tfidf      `txl baseline` (TF-IDF + LinearSVC) on the full texts
  tfidf512   `txl baseline` on documents cut to their first 512 words
Each result is appended to benchmarks/long_docs.json (machine, command, minutes, test accuracy / macro-F1) and
the table in benchmarks/RESULTS.md between `<!-- long-docs:start -->` and `<!-- long-docs:end -->` is rewritten
from that file. Models go to runs/long_docs/<dataset>.<variant>/.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipelines.runtime.cpu import cpu_has_bf16_units

HERE = Path(__file__).resolve().parent
FILES = {"ungdc": "ungdc/ungdc_continent.csv.xz", "oyez": "oyez/oyez_scotus_oral_args_decade.csv.xz"}
RESULTS, TABLE = HERE / "long_docs.json", HERE / "RESULTS.md"
START, END = "<!-- long-docs:start -->", "<!-- long-docs:end -->"
VARIANTS = ("default", "first512", "mem0", "tfidf", "tfidf512")  # what this script runs (the peer: peer.py)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import os
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    units = "AVX512-BF16" if cpu_has_bf16_units() else ("AVX-512" if " avx512f" in flags else "AVX2") + ", no bf16 units"
    return f"{cpu}, {os.cpu_count()} cores, {units}"


def first_words(source: Path, out: Path, n: int = 512) -> Path:
    """The data set with each text cut to its first `n` words (both splits)."""
    if not out.exists():
        frame = pd.read_csv(source)
        frame["text"] = frame["text"].map(lambda t: " ".join(str(t).split()[:n]))
        frame.to_csv(out, index=False)
    return out


def _run(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    return (time.time() - started) / 60


# Stand-ins for the held-out sets ../shared does not hold, sampled (seeded) from its data: name -> (source: a
# folder of train/test files or one file with a `split` column, least words a document has, training documents,
# test documents, what it stands in for)
SAMPLES = {
    "imdb_long": ("imdb", 400, 1800, 1000, "IMDB reviews of 400+ words (median about 540): long reviews"),
    "news_long": ("20newsgroups", 400, 645, 500, "20 Newsgroups posts of 400+ words (median about 600), 20 labels: "
                  "a small set of long news-like articles"),
    "oyez_small": (FILES["oyez"], 0, 240, 150, "oyez transcripts (median about 9,400 words), 240 to train: a few "
                   "hundred whole books or plays"),
}


def sample_set(name: str, data: Path, out: Path) -> Path:
    """The stand-in `name` (SAMPLES), written once to `out`: a seeded sample of its source's train and test
    splits, documents of at least its number of words."""
    if not out.exists():
        source, min_words, n_train, n_test, _ = SAMPLES[name]
        whole = None if (data / source).is_dir() else pd.read_csv(data / source)
        parts = []
        for split, n in (("train", n_train), ("test", n_test)):
            frame = pd.read_csv(data / source / f"{split}.csv.xz") if whole is None else whole[whole["split"] == split]
            frame = frame[frame["text"].str.split().str.len() >= min_words]
            parts.append(frame.sample(n=n, random_state=0)[["text", "label"]].assign(split=split))
        pd.concat(parts).to_csv(out, index=False)
    return out


def run_variant(dataset: str, variant: str, data: Path, minutes: float, runs: Path) -> dict:
    runs.mkdir(parents=True, exist_ok=True)
    source = sample_set(dataset, data, runs / f"{dataset}.csv") if dataset in SAMPLES else data / FILES[dataset]
    table = first_words(source, runs / f"{dataset}.first512.csv") if variant.endswith("512") else source
    out = runs / f"{dataset}.{variant}"
    txl = [sys.executable, "-m", "pipelines.cli"]
    if variant.startswith("tfidf"):
        took = _run([*txl, "baseline", "--train", str(table), "--test", str(table), "--out", str(out) + ".json",
                      "--overwrite"])
        metrics = json.loads(Path(str(out) + ".json").read_text())
    else:
        extra = ["--mem-len", "0"] if variant == "mem0" else []
        took = _run([*txl, "train", "--train", str(table), "--out", str(out), "--max-minutes", str(minutes), *extra])
        _run([*txl, "evaluate", "--model", str(out), "--data", str(table), "--split", "test",
              "--out", str(out / "test")])
        metrics = json.loads((out / "test" / "metrics.json").read_text())
    return result_row(dataset, variant, took, metrics,
                      f"python -m benchmarks.long_docs --dataset {dataset} --variants {variant}"
                      + ("" if variant.startswith("tfidf") else f" --minutes {minutes:g}"))


def result_row(dataset: str, variant: str, minutes: float, metrics: dict, command: str) -> dict:
    """One run's entry of benchmarks/long_docs.json, on this machine."""
    return {"dataset": dataset, "variant": variant, "minutes": round(minutes, 1), "machine": machine(),
            "accuracy": round(100 * metrics["accuracy"], 2), "macro_f1": round(100 * metrics["macro_f1"], 2),
            "command": command}


def record(row: dict) -> None:
    """Print `row`, append it to benchmarks/long_docs.json and rewrite the table in RESULTS.md."""
    print(json.dumps(row), flush=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows.append(row)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    write_table(rows)


COLUMNS = ("default", "first512", "mem0", "peer_embeddings", "peer_stacked", "tfidf", "tfidf512")
HEADS = ("default recipe", "same, first 512 words", "same, --mem-len 0", "peer: embeddings + LR", "peer: stacked",
         "TF-IDF full", "TF-IDF first 512")


def _short(machine_name: str) -> str:
    """RESULTS.md's name of a machine: CPU-A (bf16 units) or CPU-B (AVX2), else as recorded."""
    return "CPU-A" if "AVX512-BF16" in machine_name else "CPU-B" if "AVX2" in machine_name else machine_name


def write_table(rows: list[dict]) -> None:
    """One row per data set, one column per variant: the last run of each on each machine (CPU-A first)."""
    latest = {(r["dataset"], r["variant"], _short(r["machine"])): r for r in rows}
    lines = ["Test accuracy / macro-F1; CPU-A unless marked. Commands, minutes and machines: "
             "benchmarks/long_docs.json.", "",
             "| data set | budget, min | " + " | ".join(HEADS) + " |", "|---|---:|" + "---:|" * len(HEADS)]
    for dataset in sorted({r["dataset"] for r in rows}):
        budgets = {r["command"].split("--minutes ")[1] for r in rows
                   if r["dataset"] == dataset and r["variant"] == "default" and "--minutes " in r["command"]}
        cells = [", ".join(sorted(budgets))]
        for variant in COLUMNS:
            runs = sorted((m, r) for (d, v, m), r in latest.items() if d == dataset and v == variant)
            cells.append("<br>".join(f"{r['accuracy']:.2f} / {r['macro_f1']:.2f}" + ("" if m == "CPU-A" else f" ({m})")
                                     for m, r in runs))
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    text = TABLE.read_text()
    if START not in text:
        text += f"\n## Long documents (python -m benchmarks.long_docs)\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    TABLE.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted([*FILES, *SAMPLES]), required=True,
                   help="; ".join(f"{name}: {about[-1]}" for name, about in SAMPLES.items()))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["tfidf", "tfidf512", "default"])
    p.add_argument("--minutes", type=float, default=30.0, help="--max-minutes of the recipe's runs")
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "long_docs")
    args = p.parse_args()
    for variant in args.variants:
        record(run_variant(args.dataset, variant, args.data, args.minutes, args.runs))


if __name__ == "__main__":
    main()
