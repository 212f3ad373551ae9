"""Does a trained classifier read documents that span two segments better as one longer segment? The test
documents whose token count lies in (T, 2T] (T = the model's segment length) are classified twice with the
same weights: as trained (two segments, the second reading the first as memory) and with the segment length
set to 2T (one segment, no memory), both through `txl evaluate` in the same precision.

    python benchmarks/segment_probe.py --dataset imdb --model runs/accuracy/imdb.minilm [--precision bf16]

Prints both accuracies on that subset.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from pipelines.data.labeled_texts import load_labeled
from pipelines.data.bpe_tokenizer import encode_batch
from pipelines.data.word_tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import DATASETS  # noqa: E402  (benchmarks/ is scripts, not a package)


def evaluate(model: Path, data: Path, out: Path, precision: str) -> float:
    subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", "--model", str(model), "--data", str(data),
                    "--out", str(out), "--precision", precision], check=True, stderr=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["accuracy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--precision", default="bf16")
    args = p.parse_args(argv)
    texts, labels = load_labeled(str(args.data / DATASETS[args.dataset][1]), text_column="text",
                                 label_column="label", split_column="split", split="test")
    segment = json.loads((args.model / "config.json").read_text())["segment_len"]
    tokens = [len(ids) for ids in encode_batch(load_tokenizer(args.model / "tokenizer.json"), texts)]
    keep = [i for i, n in enumerate(tokens) if segment < n <= 2 * segment]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "two_segments.csv"
        pd.DataFrame({"text": [texts[i] for i in keep], "label": [labels[i] for i in keep]}).to_csv(data, index=False)
        longer = tmp / "model"
        shutil.copytree(args.model, longer, ignore=shutil.ignore_patterns("checkpoint*"))
        config = json.loads((longer / "config.json").read_text())
        (longer / "config.json").write_text(json.dumps(config | {"segment_len": 2 * segment}, indent=1))
        as_trained = evaluate(args.model, data, tmp / "as_trained", args.precision)
        one_segment = evaluate(longer, data, tmp / "one_segment", args.precision)
    print(f"{args.dataset}: {len(keep):,} test documents of {segment + 1}-{2 * segment} tokens, {args.precision}: "
          f"{100 * as_trained:.2f} read in two {segment}-token segments, {100 * one_segment:.2f} in one of "
          f"{2 * segment}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
