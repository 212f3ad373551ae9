"""Reading tables: CSV / TSV / JSONL / Parquet, optionally compressed (.gz .xz .zst .bz2), whole or in chunks.

Text is decoded as UTF-8 (a BOM is dropped); a file that is not valid UTF-8 is read as Latin-1, with a
warning, rather than rejected. Every problem a user can fix becomes a one-line `UserError`.
"""
from __future__ import annotations

import bz2
import csv
import difflib
import gzip
import io
import lzma
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd

from .errors import UserError

COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open, ".zst": None}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet"}
SAMPLE_BYTES = 1 << 20


def table_format(path: str | Path) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in FORMATS:
        raise UserError(f"cannot read {path}: use a .csv, .tsv, .jsonl or .parquet file "
                        "(csv/tsv/jsonl may end in .gz, .xz, .zst or .bz2)")
    return FORMATS[suffixes[-1]]


def open_binary(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rb")
    return COMPRESSIONS.get(suffix, open)(path, "rb")


def _sample(path: Path) -> bytes:
    try:
        with open_binary(path) as f:
            return f.read(SAMPLE_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"cannot read {path}: the file is damaged or not what its name says ({e})") from None


def detect_encoding(sample: bytes, path: Path) -> str:
    """utf-8-sig when the sample decodes as UTF-8 (an incomplete last character is fine), else latin-1."""
    try:
        sample.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3 and len(sample) == SAMPLE_BYTES:
            return "utf-8-sig"
    print(f"txl: {path.name} is not valid UTF-8; reading it as Latin-1", file=sys.stderr)
    return "latin-1"


def _check_header(sample: bytes, encoding: str, sep: str, path: Path) -> None:
    text = sample.decode(encoding, errors="replace")
    if not text.strip():
        raise UserError(f"{path} is empty; it needs a header row and at least one data row")
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise UserError(f"{path}: the header repeats the column(s) {', '.join(map(repr, dupes))}; rename them")


def _reader(path: Path, fmt: str, chunk_rows: int | None):
    """pandas reader: a DataFrame, or an iterator of DataFrames when chunk_rows is given."""
    if fmt == "parquet":
        return _parquet(path, chunk_rows)
    sample = _sample(path)
    if not sample.strip():
        raise UserError(f"{path} is empty; it needs a header row and at least one data row")
    encoding = detect_encoding(sample, path)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows, encoding=encoding,
                            encoding_errors="replace")
    sep = "\t" if fmt == "tsv" else ","
    _check_header(sample, encoding, sep, path)
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, chunksize=chunk_rows, encoding=encoding,
                       encoding_errors="replace")


def _parquet(path: Path, chunk_rows: int | None):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet data
        raise UserError(f"cannot read {path}: not a valid Parquet file ({str(e)[:100]})") from None
    if chunk_rows is None:
        return pf.read().to_pandas()
    return (batch.to_pandas() for batch in pf.iter_batches(batch_size=chunk_rows))


def _check_columns(frame: pd.DataFrame, wanted: list[str], path: Path) -> None:
    for column in wanted:
        if column in frame.columns:
            continue
        have = [str(c) for c in frame.columns]
        if len(have) == 1 and any(d in have[0] for d in (";", "\t", "|", ",")):
            raise UserError(f"{path}: found a single column {have[0][:60]!r}; the file seems to use another "
                            "delimiter (use .tsv for tabs, or convert it to commas)")
        close = difflib.get_close_matches(column, have, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{path}: no column {column!r} (columns: {', '.join(have[:20])}){hint} "
                        "Choose it with --text-column / --label-column")


def iter_table(path: str | Path, *, chunk_rows: int = 2000, text_column: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the file in chunks of `chunk_rows` rows (the whole file is never in memory)."""
    path = _existing(path)
    reader = _reader(path, table_format(path), chunk_rows)
    first = True
    try:
        for chunk in reader:
            if first and text_column:
                _check_columns(chunk, [text_column], path)
            first = False
            if text_column:
                chunk[text_column] = chunk[text_column].map(_as_text)
            yield chunk
    except (pd.errors.ParserError, ValueError, UnicodeError) as e:
        raise UserError(f"cannot parse {path}: {str(e).strip().splitlines()[-1][:160]}") from None
    if first:
        raise UserError(f"{path} has a header but no rows")


def read_table(path: str | Path, *, columns: list[str] | None = None) -> pd.DataFrame:
    path = _existing(path)
    try:
        frame = _reader(path, table_format(path), None)
    except (pd.errors.ParserError, ValueError, UnicodeError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot parse {path}: {str(e).strip().splitlines()[-1][:160]}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; it needs a header row and at least one data row") from None
    _check_columns(frame, columns or [], path)
    return frame


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file {path} not found")
    return path


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value if isinstance(value, str) else str(value)


def load_labeled(path, *, text_column: str = "text", label_column: str = "label", split_column: str = "split",
                 split: str | None = None) -> tuple[list[str], list[str]]:
    """Texts and label strings of a labelled file; rows of `split` only when the file has a split column
    holding that value. Empty texts and labels are dropped with a warning."""
    frame = read_table(path, columns=[text_column, label_column])
    if split and split_column in frame.columns and split in set(frame[split_column].astype(str)):
        frame = frame[frame[split_column].astype(str) == split]
    texts = [_as_text(t) for t in frame[text_column]]
    labels = [_as_text(y).strip() for y in frame[label_column]]
    keep = [i for i, (t, y) in enumerate(zip(texts, labels)) if t.strip() and y]
    dropped = len(texts) - len(keep)
    if dropped:
        print(f"txl: {path}: skipped {dropped} rows with an empty text or label", file=sys.stderr)
    if not keep:
        raise UserError(f"{path}: no row has both a text and a label")
    return [texts[i] for i in keep], [labels[i] for i in keep]
