"""Reading tables: CSV / TSV / JSON lines / Parquet, the text ones optionally compressed, whole or in chunks,
from a file or from an upload's bytes (a `Source`). `txl` and the app read through this module alike.

Text is decoded by `decoding`'s one rule. The delimiter comes from the name (.csv commas, .tsv tabs) and is
never guessed: a file that parses to a single column whose name holds another delimiter is refused with the
fix. Every problem a user can fix becomes a one-line `UserError` that says what to do; every note on input
that was odd but usable (bytes that are not UTF-8) a `DataWarning`, or a `Table`'s notes.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.decoding import (
    ENCODING,
    FALLBACK,
    check_not_binary,
    decode,
    encoding_of,
    fallback_bytes,
    fallback_note,
    not_prose,
    text_lines,
)
from pipelines.data.sources import (
    DAMAGED,
    FORMATS,
    OPENERS,
    SUPPORTED,
    Source,
    check_expansion,
    checked,
    max_row_bytes,
    opened,
    probe_once,
    table_format,
)
from pipelines.data.table_errors import (
    check_columns,
    check_delimiter,
    check_repeats,
    first_bad_json_line,
    objects_only,
    reading,
)
from pipelines.errors import DataWarning, UserError

__all__ = ["DAMAGED", "DEFAULT_CHUNK_ROWS", "ENCODING", "FALLBACK", "FORMATS", "OPENERS", "SUPPORTED", "Source",
           "Table", "as_text", "iter_table", "load_table", "parquet_unpacked_bytes", "read_table", "table_columns",
           "table_format"]

PEEK_BYTES = 1 << 16
DEFAULT_CHUNK_ROWS = 2000
# dtype=False keeps JSON strings strings; before pandas 3 it still turned columns named like dates into dates
JSON_DATES = {"convert_dates": False} if int(pd.__version__.split(".")[0]) < 3 else {}


@dataclass(frozen=True)
class Table:
    """A whole table and the notes for its reader (what `read_table` issues as DataWarnings)."""
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Layout:
    """What a read needs to know first: the column names and, for text, (encoding, error handler)."""
    columns: list[str]
    encoding: tuple[str, str] = (ENCODING, FALLBACK)


def _peek(source: Source, fmt: str) -> bytes:
    """The first decompressed bytes; reading them catches an empty, damaged, binary or mislabelled file early."""
    with opened(source) as (_, stream):
        head = stream.read(PEEK_BYTES)
    text, _ = decode(head)
    if not text.strip():
        raise UserError(f"{source.name} is empty; it needs a header row and at least one data row")
    check_not_binary(source.name, head, text, what=f"a {fmt} table")
    return head


def _raw_csv_header(source: Source, fmt: str, encoding: tuple[str, str]) -> list[str]:
    """The header row as written: pandas silently renames a repeated column 'a' to 'a.1', so repeats are looked
    for here. Read from the file, not from the peeked bytes: a header can be longer than they are."""
    with opened(source) as (_, stream):
        text = io.TextIOWrapper(stream, encoding=encoding[0], errors=encoding[1], newline="")
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, max_row_bytes()))
        try:
            return next(csv.reader(text, delimiter=_sep(fmt)), [])
        finally:
            csv.field_size_limit(limit)


def _sep(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _csv_reader(stream, fmt: str, encoding: tuple[str, str], **kwargs):
    # index_col=False: rows with one field more than the header would otherwise make the first field an index and
    # shift every column by one, silently (`reading` turns pandas' warning about it into an error)
    return pd.read_csv(stream, sep=_sep(fmt), dtype=str, keep_default_na=False, compression=None, index_col=False,
                       encoding=encoding[0], encoding_errors=encoding[1], **kwargs)


def _jsonl_reader(stream, encoding: tuple[str, str], **kwargs):
    return pd.read_json(stream, lines=True, dtype=False, compression=None, encoding=encoding[0],
                        encoding_errors=encoding[1], **JSON_DATES, **kwargs)


def _reading(source: Source, fmt: str):
    """`reading`, able to name the first line of JSON lines that is not an object."""
    return reading(source.name, fmt, locate=(lambda: _bad_json_line(source)) if fmt == "jsonl" else None)


def _bad_json_line(source: Source) -> str | None:
    with opened(source) as (_, stream):
        return first_bad_json_line(text_lines(stream))


def _layout(source: Source, fmt: str) -> _Layout:
    with _reading(source, fmt):
        if fmt == "parquet":
            with source.open() as raw:
                names = pq.ParquetFile(raw).schema_arrow.names
                check_repeats(names, source.name)
                _check_width(source, names)
                probe_once(source, lambda: list(_parquet_batches(source, raw, batch_size=65_536, decode=False)))
            return _Layout(names)
        head = _peek(source, fmt)
        encoding = encoding_of(head)
        with opened(source) as (_, stream):
            if fmt == "jsonl":  # JSON lines have no header: the keys of the first rows stand for it
                with _jsonl_reader(stream, encoding, chunksize=100) as reader:
                    keys = list(objects_only(next(iter(reader))).columns)
                _check_width(source, keys)
                return _Layout(keys, encoding)
            header = _raw_csv_header(source, fmt, encoding)
            _check_width(source, header)
            check_repeats(header, source.name)
            columns = [str(c) for c in _csv_reader(stream, fmt, encoding, nrows=0).columns]
    check_delimiter(source.name, fmt, columns)
    return _Layout(columns, encoding)


def _decoded_bytes(batch, source: Source) -> int:
    """What a Parquet batch's values take once decoded: a dictionary-encoded column of text counts each row's
    text, not the dictionary's (pandas and the model see one string a row). A cell longer than
    `max_row_bytes` (TXL_MAX_DOC_MB) is refused, as a row of a text table is."""
    size, limit = 0, max_row_bytes()
    for column in batch.columns:
        values = column.dictionary if pa.types.is_dictionary(column.type) else column
        if _is_text(values.type) and len(values):
            longest = pc.max(pc.binary_length(values)).as_py() or 0
            if longest > limit:
                raise UserError(f"{source.name} holds a cell over {limit / 1e6:g} MB; such a document is refused to "
                                "keep memory bounded: set TXL_MAX_DOC_MB to a larger number of megabytes to read it")
        if values is not column and _is_text(values.type):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
            size += int(pc.sum(lengths).as_py() or 0) + 8 * len(column)
        else:
            size += column.nbytes
    return size


def _is_text(kind) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
        or pa.types.is_large_binary(kind)


MAX_COLUMNS = 10_000  # a table of documents has a few; 60,000 took 80 s and 1.3 GB for two rows


def _check_width(source: Source, columns: list[str]) -> None:
    if len(columns) > MAX_COLUMNS:
        raise UserError(f"{source.name} has {len(columns):,} columns; txl reads tables of at most {MAX_COLUMNS:,}. "
                        "Keep the text column and the few others you want in the output")


def table_columns(source: str | Path | Source) -> list[str]:
    """The column names of a table, read from its header (or first rows) only."""
    return _layout(*checked(source)).columns


def parquet_unpacked_bytes(source: str | Path | Source) -> int:
    """What a Parquet file's data takes uncompressed, from its footer, without reading the data."""
    source, fmt = checked(source)
    with _reading(source, fmt), source.open() as raw:
        meta = pq.ParquetFile(raw).metadata
        return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def _read_whole(source: Source, fmt: str, layout: _Layout, columns: list[str] | None,
                rows: int | None) -> pd.DataFrame:
    with opened(source) as (_, stream):
        if fmt == "parquet":
            return _parquet_rows(source, stream, columns, rows)
        if fmt == "jsonl":
            frame = objects_only(_jsonl_rows(stream, layout.encoding, rows))
            return frame.reindex(columns=columns) if columns else frame
        return _csv_reader(stream, fmt, layout.encoding, usecols=columns, nrows=rows)


def _parquet_rows(source: Source, stream, columns: list[str] | None, rows: int | None) -> pd.DataFrame:
    batches = []
    for batch in _parquet_batches(source, stream, batch_size=rows or 65_536, columns=columns):
        batches.append(batch)
        if rows is not None:
            break
    if not batches:
        schema = pq.ParquetFile(stream).schema_arrow
        return pa.Table.from_batches([], schema=schema if columns is None else pa.schema(
            [schema.field(c) for c in columns], metadata=schema.metadata)).to_pandas()
    return pa.Table.from_batches(batches).to_pandas()


def _parquet_batches(source: Source, raw, *, batch_size: int, columns: list[str] | None = None, decode: bool = True):
    """A Parquet file's record batches, each checked before its text is decoded: the footer's uncompressed size,
    then every batch read with its text columns dictionary-encoded, so that what they hold decoded (each row's
    string) is counted and bounded (`check_expansion`, `max_row_bytes`) before it takes memory; with `decode`
    False nothing is yielded (the probe). A file of a few hundred bytes can hold 65,536 rows of a 1 MB string in
    one batch, or one string of gigabytes."""
    file = pq.ParquetFile(raw)
    meta = file.metadata
    check_expansion(source.name, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                    source.size)
    schema = file.schema_arrow
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    plain_text = [f.name for f in schema if _is_text(f.type)]
    raw.seek(0)
    coded = pq.ParquetFile(raw, read_dictionary=plain_text) if plain_text else file
    decoded = 0
    for batch in coded.iter_batches(batch_size=batch_size, columns=columns):
        decoded = check_expansion(source.name, decoded + _decoded_bytes(batch, source), source.size)
        if decode:
            yield pa.RecordBatch.from_arrays(
                [col.dictionary_decode() if name in plain_text else col
                 for name, col in zip(batch.schema.names, batch.columns)], schema=schema)


def _jsonl_rows(stream, encoding: tuple[str, str], rows: int | None) -> pd.DataFrame:
    if rows is None:
        return _jsonl_reader(stream, encoding)
    chunks, read = [], 0  # not `nrows`: pandas counts blank lines in it
    with _jsonl_reader(stream, encoding, chunksize=rows) as reader:
        for chunk in reader:
            chunks.append(chunk)
            read += len(chunk)
            if read >= rows:
                break
    return pd.concat(chunks, ignore_index=True).head(rows) if chunks else pd.DataFrame()


def load_table(source: str | Path | Source, *, columns: list[str] | None = None, rows: int | None = None) -> Table:
    """The whole table as `read_table` reads it (only its first `rows` data rows when given), with its notes
    returned rather than issued."""
    source, fmt = checked(source)
    columns = list(dict.fromkeys(columns)) if columns else None
    layout = _layout(source, fmt)
    check_columns(source.name, layout.columns, columns or [])
    since = fallback_bytes()
    with _reading(source, fmt):
        frame = _read_whole(source, fmt, layout, columns, rows)
    fallen_back = fallback_bytes() - since
    if len(frame) == 0:
        raise UserError(f"{source.name} has a header but no data rows")
    return Table(frame[columns] if columns else frame, [fallback_note(source.name, fallen_back)] if fallen_back else [])


def read_table(source: str | Path | Source, *, columns: list[str] | None = None) -> pd.DataFrame:
    """The whole table; only `columns`, in that order, when given (each must exist).

    CSV/TSV cells are strings and an empty cell is "" ("NA" stays text); JSON lines and Parquet keep their
    types, with None or NaN for a missing value. Bytes that are not UTF-8 give one DataWarning.
    """
    table = load_table(source, columns=columns)
    for note in table.notes:
        warnings.warn(note, DataWarning, stacklevel=2)
    return table.frame


def _read_chunks(source: Source, fmt: str, layout: _Layout, chunk_rows: int,
                 columns: list[str] | None) -> Iterator[tuple[pd.DataFrame, float, int]]:
    """(chunk, fraction of the source read so far, bytes its reading decoded by the fallback). The fraction:
    for Parquet rows over the row count in its footer, exact; for text, the position in the stored bytes
    (compressed ones for a compressed file), a close estimate that reaches 1.0 with the last chunk."""
    if fmt == "parquet":
        with source.open() as raw:
            total, done = max(pq.ParquetFile(raw).metadata.num_rows, 1), 0
            for batch in _parquet_batches(source, raw, batch_size=chunk_rows, columns=columns):
                done += batch.num_rows
                yield batch.to_pandas(), done / total, 0
        return
    size, since = max(source.size, 1), fallback_bytes()  # pandas decodes its first block on opening
    with opened(source) as (raw, stream):
        if fmt == "jsonl":  # a key absent from every row of one chunk is still a column, of missing values
            reader = _jsonl_reader(stream, layout.encoding, chunksize=chunk_rows)
        else:
            reader = _csv_reader(stream, fmt, layout.encoding, usecols=columns, chunksize=chunk_rows)
        with reader:
            for chunk in reader:
                if fmt == "jsonl":
                    chunk = objects_only(chunk)
                    chunk = chunk.reindex(columns=columns) if columns else chunk
                yield chunk, min(raw.tell() / size, 1.0), fallback_bytes() - since
                since = fallback_bytes()  # what the caller decodes between chunks is not this file's


def iter_table(source: str | Path | Source, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               columns: list[str] | None = None, text_column: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the table in DataFrames of at most `chunk_rows` rows, never holding the whole file.

    Each chunk's index is the absolute 0-based data-row number, and `chunk.attrs["fraction_read"]` the part
    of the file read so far (1.0 with the last chunk), from which a progress bar estimates the row count.
    `columns` as in `read_table`; `text_column` must exist and its cells come out as strings ("" for a
    missing value). Bytes that are not UTF-8 give one DataWarning, after the last chunk, with their count.
    """
    if chunk_rows < 1:
        raise UserError(f"the chunk size must be at least 1 row, not {chunk_rows}")
    source, fmt = checked(source)
    columns = list(dict.fromkeys(columns)) if columns else None
    layout = _layout(source, fmt)
    check_columns(source.name, layout.columns, [*(columns or []), *([text_column] if text_column else [])])
    start, fallen_back, first_row = 0, 0, 0
    with _reading(source, fmt):
        for chunk, fraction, extra in _read_chunks(source, fmt, layout, chunk_rows, columns):
            if len(chunk) == 0:  # pandas counts blank JSON lines as rows, then drops them
                continue
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            chunk.attrs["fraction_read"] = fraction
            if text_column:
                chunk[text_column] = chunk[text_column].map(as_text)
            first_row = start if extra and not fallen_back else first_row
            fallen_back, start = fallen_back + extra, start + len(chunk)
            yield chunk
    if start == 0:
        raise UserError(f"{source.name} has a header but no data rows")
    if fallen_back:
        warnings.warn(fallback_note(source.name, fallen_back, f" (from about row {first_row})"), DataWarning,
                      stacklevel=2)


_NUMBER = re.compile(r"\s*[-+]?(\d[\d,_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*%?\s*\Z")


def text_column_problem(values: list[str], source: str, column: str) -> str | None:
    """What is wrong with a text column, judged on its first rows (`values`, cells as strings): empty in every
    row, numbers rather than text, JSON objects (the model would read braces and keys as words), or no language
    at all (`decoding.not_prose`). None when it looks like text."""
    filled = [v for v in values if v.strip()]
    where = f"{source}: column {column!r}"
    if not filled:
        return (f"{where} is empty in all of the first {len(values):,} rows; every row gets 'empty text'. Pass "
                "--text-column with the column that holds the documents")
    if sum(bool(_NUMBER.match(v)) for v in filled) >= 0.9 * len(filled):
        return (f"{where} holds numbers, not text (the first: {filled[0].strip()[:20]!r}); the model reads them as "
                "words. Is it the right --text-column?")
    objects = sum(v.lstrip().startswith("{") and v.rstrip().endswith("}") and _is_object(v) for v in filled[:200])
    if objects >= 0.5 * min(len(filled), 200):
        return (f"{where} holds JSON objects (the first: {filled[0].strip()[:40]!r}…); the model reads their "
                "braces and keys as words. Put the text field in a column of its own")
    if why := not_prose("\n".join(filled)):
        return f"{where} does not look like language: {why}. Is it the right --text-column?"
    return None


def _is_object(value: str) -> bool:
    import json

    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def as_text(value) -> str:
    """A cell as a string: "" for None / NaN / NA, "3" for the float 3.0 that a missing value makes of an int."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)
