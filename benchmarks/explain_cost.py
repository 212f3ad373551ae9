"""What an explanation costs against a prediction: one `predict` and one `explain` (pipelines/model/explain.py) of
the first N test documents of a long-document set, joined into one text, for each N.

    python -m benchmarks.explain_cost --model runs/long_docs/ungdc.default [--dataset ungdc] [--docs 1 4]

Prints, per text: tokens, parts, both times, their ratio and the segment readings per segment (at most
layers x ceil(memory / segment) + 1).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipelines.model.explain import explain
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir

HERE = Path(__file__).resolve().parent
FILES = {"ungdc": "ungdc/ungdc_continent.csv.xz", "oyez": "oyez/oyez_scotus_oral_args_decade.csv.xz"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", choices=sorted(FILES), default="ungdc")
    p.add_argument("--docs", type=int, nargs="+", default=[1, 4])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = p.parse_args()
    md = prepare(load_model_dir(args.model))
    frame = pd.read_csv(args.data / FILES[args.dataset])
    test = frame[frame["split"] == "test"] if "split" in frame else frame
    for n in args.docs:
        text = "\n\n".join(test.text.iloc[:n])
        started = time.perf_counter()
        pred = predict(md, [text])[0]
        read = time.perf_counter() - started
        started = time.perf_counter()
        out = explain(md, text)
        took = time.perf_counter() - started
        print(f"{pred.n_tokens:,} tokens, {len(out.parts)} {out.parts[0].unit}s: predict {read:.1f} s, explain "
              f"{took:.1f} s ({took / read:.1f}x), {out.reads:.2f} segment readings a segment", flush=True)


if __name__ == "__main__":
    main()
