"""Peak memory and time of the n-gram fit (`pipelines.model.ngrams.fit_ngram`) as its training text grows.

    python -m benchmarks.ngram_memory [--millions 8 16 32 64] [--ngrams fuse|words]

Fits the n-gram part (TF-IDF word 1-2-grams and character 2-5-grams, + LinearSVC; `--ngrams words`: the words
alone) on N million characters of imdb's reviews (its train and test files in ../shared/data/imdb, shuffled
with seed 0, labels as given), each size in a fresh process, and prints the process's peak resident memory
above what it held just before the fit (its texts loaded), the seconds and the terms kept. The fit's memory
grows with the text it reads (scikit-learn counts every n-gram before pruning to min_df 2 and the most
frequent), which is why `txl train` fits it on at most `MAX_FIT_CHARS` characters (`MAX_FIT_CHARS_WITH_CHARS`
with the character n-grams, which count several times as many n-grams per character).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(millions: float, data: Path, chars: bool = True) -> dict:
    import numpy as np
    import pandas as pd

    from pipelines.model.ngrams import fit_ngram

    frames = [pd.read_csv(data / "imdb" / f) for f in ("train.csv.xz", "test.csv.xz")]
    frame = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=0)  # the files are sorted by label
    limit, total, texts, labels = int(millions * 1e6), 0, [], []
    for text, label in zip(frame.text, frame.label):
        if total + len(text) > limit:
            break
        texts.append(text), labels.append(label)
        total += len(text)
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    del frame, frames
    gc.collect()
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 10  # kB resident now
    started = time.perf_counter()
    import pipelines.model.ngrams as ngram
    ngram.MAX_FIT_CHARS = ngram.MAX_FIT_CHARS_WITH_CHARS = 10 ** 12  # measure the fit itself, unsampled
    model = fit_ngram(texts, y, multi_label=False, n_labels=len(names), chars=chars)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"million_chars": round(total / 1e6, 1), "documents": len(texts), "terms": len(model.terms),
            "peak_mb_above_start": round(max(0, peak - before) / 1024), "peak_mb": round(peak / 1024),
            "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--millions", type=float, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--ngrams", choices=("fuse", "words"), default="fuse",
                   help="fuse: word and character n-grams (`txl train`'s default); words: word n-grams only")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.data, args.ngrams == "fuse")))
        return
    print("| million characters | documents | terms kept | peak MB above start | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for m in args.millions:
        done = subprocess.run([sys.executable, "-m", "benchmarks.ngram_memory", "--one", str(m), "--data",
                               str(args.data.resolve()), "--ngrams", args.ngrams],
                              capture_output=True, text=True, cwd=HERE.parent)
        if done.returncode != 0:
            raise SystemExit(done.stderr.strip().splitlines()[-1])
        r = json.loads(done.stdout)
        print(f"| {r['million_chars']} | {r['documents']:,} | {r['terms']:,} | {r['peak_mb_above_start']:,} | "
              f"{r['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
