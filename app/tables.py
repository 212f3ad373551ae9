"""Uploaded tables (CSV, TSV, JSONL, Parquet) → one document per row of the chosen text column.

The text column is the user's choice, else the first of text/body/content/document, else the text-like
column (not ids, scores or flags) with the longest mean length. A repeated header is refused rather than
renamed; empty cells are skipped with a warning.
"""
from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pyarrow.parquet as pq

from app.decode import Document, ExtractError, ExtractResult, brief, decode_text, mb

TEXT_COLUMN_NAMES = ("text", "body", "content", "document")  # preferred, in this order


def table_result(name: str, suffix: str, data: bytes, *, text_column: str | None,
                  max_unpacked_bytes: int) -> ExtractResult:
    if suffix == ".parquet":
        frame, warnings = _read_parquet(name, data, max_unpacked_bytes=max_unpacked_bytes), []
    else:
        text, warnings = decode_text(name, data)
        frame = _read_jsonl(name, text) if suffix == ".jsonl" else _read_delimited(name, text, suffix)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)  # pandas may restore int column names
    if frame.empty:
        raise ExtractError(f"{name}: the table has no rows; it needs a header and at least one row")
    candidates = [c for c in frame.columns if _text_like(frame[c])]
    column = text_column if text_column is not None else _default_column(name, frame, candidates)
    if column not in frame.columns:
        raise ExtractError(f"{name}: no column {column!r}; the columns are {', '.join(map(repr, frame.columns))}")
    texts = [_cell_text(v).strip() for v in frame[column]]
    documents = [Document(f"{name}#{row}", t) for row, t in enumerate(texts, start=1) if t]
    if not documents:
        raise ExtractError(f"{name}: every {column!r} cell is empty; choose the column that holds the text")
    if len(documents) < len(texts):
        warnings = warnings + [f"{name}: skipped {len(texts) - len(documents)} rows with an empty {column!r} cell"]
    return ExtractResult(documents, columns=candidates, text_column=column, warnings=warnings)


def _read_delimited(name: str, text: str, suffix: str) -> pd.DataFrame:
    try:
        sep = csv.Sniffer().sniff(text[:65536], delimiters=",\t;").delimiter
    except csv.Error:
        sep = "\t" if suffix == ".tsv" else ","
    try:  # header=None: pandas would rename a repeated header to "x.1" instead of letting us refuse it
        rows = pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False)
    except (ValueError, csv.Error) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise ExtractError(f"{name}: cannot parse it as a table ({brief(e)}); check the delimiter and quotes"
                           ) from None
    header = [h.strip() or f"column_{i}" for i, h in enumerate(rows.iloc[0], start=1)]
    _check_header(name, header)
    return rows.iloc[1:].set_axis(header, axis=1).reset_index(drop=True)


def _read_jsonl(name: str, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExtractError(f"{name}: line {number} is not valid JSON ({e.msg}); each line must be one "
                               "JSON object") from None
        if not isinstance(record, dict):
            raise ExtractError(f"{name}: line {number} is a JSON {type(record).__name__}, not an object; each "
                               'line must look like {"text": "..."}')
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_parquet(name: str, data: bytes, *, max_unpacked_bytes: int) -> pd.DataFrame:
    try:
        file = pq.ParquetFile(io.BytesIO(data))
        meta = file.metadata
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        header = file.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on damaged data
        raise ExtractError(f"{name} is not a valid Parquet file ({brief(e)})") from None
    if unpacked > max_unpacked_bytes:
        raise ExtractError(f"{name} unpacks to {mb(unpacked)}, over the {mb(max_unpacked_bytes)} limit; "
                           "split it into smaller files")
    _check_header(name, header)
    try:
        return file.read().to_pandas()
    except Exception as e:  # noqa: BLE001
        raise ExtractError(f"{name}: cannot read the Parquet data ({brief(e)})") from None


def _check_header(name: str, header: list[str]) -> None:
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ExtractError(f"{name}: the header repeats the column(s) {', '.join(map(repr, repeated))}; "
                           "rename them and upload again")


def _cell_text(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value)


def _text_like(values: pd.Series) -> bool:
    """True when at least half of the non-empty cells (of the first 1000) are strings that are not numbers:
    ids, scores and flags are not offered as the text column."""
    cells = [v for v in values.head(1000) if _cell_text(v).strip()]
    strings = pd.Series([v for v in cells if isinstance(v, str)], dtype=object)
    words = pd.to_numeric(strings, errors="coerce").isna().sum()
    return bool(cells) and 2 * words >= len(cells)


def _default_column(name: str, frame: pd.DataFrame, candidates: list[str]) -> str:
    by_name = {str(c).strip().lower(): c for c in candidates}
    for preferred in TEXT_COLUMN_NAMES:
        if preferred in by_name:
            return by_name[preferred]
    if not candidates:
        raise ExtractError(f"{name}: no column holds text (columns: {', '.join(map(repr, frame.columns))}); "
                           "choose the text column")
    return max(candidates, key=lambda c: frame[c].map(lambda v: len(_cell_text(v))).mean())
