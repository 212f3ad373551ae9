"""Classify every row of a file with a trained model directory, streaming, restartable.

The input is read in chunks (a file of any size never sits in memory). Each finished chunk is written whole
into `<output>.partial/`; a rerun after a crash or a kill skips the chunks already there, so no row is lost
or repeated. The output file appears, atomically, only when every chunk is done: every input column, then
`predicted_label`, `score`, one `prob_<label>` column per class (and `top<k>_label` / `top<k>_score` with
--top-k), `error` (non-empty for rows that could not be classified, e.g. empty text), and with --explain K an
`explanation` column (pipelines/model/explain.py).

Under `torchrun --nproc_per_node N -m pipelines.cli classify ...` the chunks are the unit of work: the chunks
not yet done are dealt out in turn to the N processes (one GPU each when there are GPUs), and rank 0 joins
them, in input order, into the same single output a single process writes. A killed run can be rerun with
any number of processes. See docs/SCALING.md.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipelines.data.sources import check_readable
from pipelines.data.tables import iter_table, text_column_problem
from pipelines.data.writers import (
    check_writable,
    content_hash,
    job_folder,
    output_columns,
    output_format,
    output_lock,
    refuse_overwrite,
    renamed_inputs,
    result_columns,
    write_frame,
)
from pipelines.errors import DataWarning, UserError, int_at_least
from pipelines.model.explain import explanation
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir
from pipelines.runtime import distributed as dist
from pipelines.runtime.device import PRECISIONS
from pipelines.runtime.memory import release_free_memory


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory written by `txl train`")
    p.add_argument("--input", required=True, help="csv/tsv/jsonl/parquet, optionally .gz/.xz/.zst/.bz2")
    p.add_argument("--output", required=True, help="result file (csv/tsv/jsonl/parquet, chosen by its name)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--top-k", type=int_at_least(0), default=0, help="also write the K most probable labels and scores")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on a GPU or a CPU with bf16 units (AVX512-BF16/AMX), else float32; int8 = dynamic "
                   "quantization (CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU when there is one; "
                   "under torchrun each process takes the GPU of its LOCAL_RANK)")
    p.add_argument("--explain", type=int_at_least(0), default=0, metavar="K",
                   help="also write an `explanation` column: a JSON list of the K parts of each text whose removal "
                   "changes the predicted class's log-probability most (`effect`; `start`, `end`: characters), "
                   "segments of a long text, sentences of a short one; costs up to (layers + 1) readings a text")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="documents per forward pass")
    p.add_argument("--chunk-rows", type=int_at_least(1), default=2000, help="rows per restartable chunk")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def _fingerprint(args) -> str:
    """Identifies one job by the content of the input and of every model file, and the options: a rerun with
    anything else starts over instead of mixing."""
    key = [content_hash(args.input, args.model), args.text_column, args.top_k, args.precision, args.chunk_rows,
           args.explain]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()


def _partial_dir(args) -> Path:
    return job_folder(Path(str(args.output) + ".partial"), _fingerprint(args), "classify")


def _check_output(args) -> None:
    output_format(args.output)  # raises a UserError for an unsupported name
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise UserError("--output is the input file; choose another name so the input is not overwritten")
    refuse_overwrite(args.output, overwrite=args.overwrite)
    check_writable(Path(args.output).parent, "--output")


def run(args: argparse.Namespace) -> int:
    _check_output(args)
    check_readable(Path(args.input), "give the path of a table file")
    with output_lock(args.output, "classify"), dist.session(args.device) as device:
        return _classify(args, device)  # under torchrun each rank joins the process group; nothing otherwise


def _finished_chunks(args) -> tuple[Path, set[str]]:
    """The partial folder and the chunks already in it, as rank 0 sees them: every rank must deal out the
    same remaining chunks, even when rank 0 has written a new one before another rank looks."""
    listing = None
    if dist.is_main():
        part_dir = _partial_dir(args)
        listing = sorted(p.name for p in part_dir.glob("part-*.parquet"))
    return Path(str(args.output) + ".partial"), set(dist.all_gather_object(listing)[0])


def _classify(args, device) -> int:
    md = prepare(load_model_dir(args.model), precision=args.precision, device=str(device))
    if args.top_k > len(md.labels):
        if dist.is_main():
            print(f"txl classify: --top-k {args.top_k} is more than the model's {len(md.labels)} classes; writing "
                  f"{len(md.labels)}", file=sys.stderr)
        args.top_k = len(md.labels)
    chunks = iter_table(args.input, chunk_rows=args.chunk_rows, text_column=args.text_column)
    first = next(chunks, None)  # a missing column or an unreadable file fails here, before anything is written
    problem = None if first is None else text_column_problem(first[args.text_column].tolist(),
                                                             Path(args.input).name, args.text_column)
    if problem and dist.is_main():
        warnings.warn(problem, DataWarning, stacklevel=1)
    added = ["explanation"] if args.explain else []  # what is added after result_columns
    clashes = {} if first is None else renamed_inputs(first.columns, output_columns(md.labels, args.top_k, *added))
    if clashes and dist.is_main():
        warnings.warn(f"{Path(args.input).name}: the column(s) {', '.join(map(repr, clashes))} are also output "
                      f"columns; they are kept as {', '.join(map(repr, clashes.values()))}", DataWarning, stacklevel=1)
    part_dir, finished = _finished_chunks(args)
    todo = rows = 0
    bar = tqdm(unit="doc", dynamic_ncols=True, desc="classify", disable=not dist.is_main(),
               total=None if first is None else _estimated_rows(len(first), first.attrs.get("fraction_read")))
    for index, chunk in enumerate(itertools.chain([] if first is None else [first], chunks)):
        target = part_dir / f"part-{index:06d}.parquet"
        rows += len(chunk)
        if total := _estimated_rows(rows, chunk.attrs.get("fraction_read")):
            bar.total = total
            bar.refresh()
        if target.name in finished:
            bar.update(len(chunk))
            continue
        todo += 1
        if (todo - 1) % dist.world() != dist.rank():  # the remaining chunks in turn: even after a rerun
            continue
        preds = predict(md, chunk[args.text_column].tolist(), batch_size=args.batch_size, progress=bar.update)
        frame = result_columns(chunk, preds, md.labels, args.top_k, *added)
        if args.explain:
            frame["explanation"] = [explanation(md, text, args.explain) if not pred.error else "[]"
                                    for text, pred in zip(chunk[args.text_column].tolist(), preds)]
        tmp = part_dir / f".part-{index:06d}.tmp"
        release_free_memory()  # what reading the chunk freed goes back before pyarrow copies its text
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    bar.close()
    dist.barrier()  # every chunk is written
    if not dist.is_main():
        return 0
    # the model and the last chunk are done with: the merge below then peaks at what it holds, not on top of them
    # (a 1M-token document: 1.15x the memory of a 4k-token one before, measured with /usr/bin/time)
    del md, first, chunks
    chunk = frame = preds = None  # noqa: F841
    gc.collect()
    release_free_memory()
    parts = sorted(part_dir.glob("part-*.parquet"))
    write_frame((pd.read_parquet(p) for p in parts), args.output)  # atomic: temporary name, then rename
    shutil.rmtree(part_dir)
    resumed = f" ({len(finished)} chunks reused from an interrupted run)" if finished else ""
    print(f"txl classify: wrote {rows} rows to {args.output}{resumed}")
    return 0


def _estimated_rows(rows: int, fraction: float | None) -> int | None:
    """The progress bar's total (hence its time left) from the rows read so far and the part of the file they
    were: exact for Parquet and once the file is read, an estimate for text files (rows differ in length)."""
    return max(rows, round(rows / fraction)) if fraction else None
