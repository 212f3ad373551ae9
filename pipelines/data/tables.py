"""Reading tables: CSV / TSV / JSON lines / Parquet, the text ones optionally compressed, whole or in chunks.

Text is decoded as UTF-8 (a BOM is dropped). Bytes that are not UTF-8 are read as Latin-1, with a warning,
rather than rejected: real exports mix the two (one Latin-1 row pasted into a UTF-8 file). Every
problem a user can fix becomes a one-line `UserError` that says what to do.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import gzip
import io
import lzma
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import DataWarning, UserError

try:
    import zstandard
except ImportError:  # a minimal image (a lent GPU's had none): every other format still reads
    zstandard = None


def _no_zstandard(*args, **kwargs):
    raise UserError("reading .zst files needs the package 'zstandard'; install it (pip install zstandard)")


FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open, ".zst": zstandard.open if zstandard else _no_zstandard}
SUPPORTED = ".csv, .tsv, .jsonl, .ndjson or .parquet (csv/tsv/jsonl may end in .gz, .xz, .zst or .bz2)"
DAMAGED = (OSError, EOFError, lzma.LZMAError, zlib.error,  # gzip's BadGzipFile is an OSError
           *((zstandard.ZstdError,) if zstandard else ()))
DELIMITERS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}
PEEK_BYTES = 1 << 16
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v") + b"\x7f"
DEFAULT_CHUNK_ROWS = 2000
ENCODING, FALLBACK = "utf-8-sig", "txl-latin-1"
# dtype=False keeps JSON strings strings; before pandas 3 it still turned columns named like dates into dates
JSON_DATES = {"convert_dates": False} if int(pd.__version__.split(".")[0]) < 3 else {}

_decoding = threading.local()  # pandas decodes in the calling thread, so a per-thread count is exact


def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: decode the offending bytes as Latin-1 (every byte is a Latin-1 character)."""
    _decoding.fallback_bytes = _fallback_bytes() + error.end - error.start
    return error.object[error.start:error.end].decode("latin-1"), error.end


def _fallback_bytes() -> int:
    return getattr(_decoding, "fallback_bytes", 0)


codecs.register_error(FALLBACK, _latin1_fallback)


def table_format(path: str | Path) -> str:
    """'csv', 'tsv', 'jsonl' or 'parquet', from the file name."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in OPENERS
    if compressed:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compressed and fmt == "parquet"):  # Parquet compresses inside the file
        raise UserError(f"cannot read {Path(path).name}: unsupported file type; use {SUPPORTED}")
    return fmt


def _checked(path: str | Path) -> tuple[Path, str]:
    """The path and its format, once the file is known to exist, be supported and not be empty."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a table file ({SUPPORTED})")
    if not path.is_file():
        raise UserError(f"file {path} not found; check the path (relative paths start at {Path.cwd()})")
    fmt = table_format(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path.name} is empty; it needs a header row and at least one data row")
    return path, fmt


def _peek(path: Path) -> bytes:
    """The first decompressed bytes; opening them catches a damaged or mislabelled file early."""
    with OPENERS.get(path.suffix.lower(), open)(path, "rb") as f:
        head = f.read(PEEK_BYTES)
    if not head.strip():
        raise UserError(f"{path.name} is empty; it needs a header row and at least one data row")
    _check_not_binary(head, path)
    return head


def _check_not_binary(head: bytes, path: Path) -> None:
    """Text tables hold no NUL and next to no control bytes; binary data (or UTF-16) has many. Without this
    check such a file parses into garbage column names and fails later with a puzzling message."""
    controls = len(head) - len(head.translate(None, CONTROL_BYTES))
    if b"\0" in head or controls > 0.05 * len(head):
        raise UserError(f"{path.name} looks like a binary file (or UTF-16 text), not a {table_format(path)} "
                        "table; save it as UTF-8 text, or give the file its real extension")


def _check_repeats(header: list[str], path: Path) -> None:
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UserError(f"{path.name}: the header repeats the column(s) {', '.join(map(repr, repeated))}; "
                        "rename them so that every column has its own name")


def _raw_csv_header(head: bytes, fmt: str) -> list[str]:
    # pandas silently renames a repeated column 'a' to 'a.1', so repeats are looked for in the raw header
    return next(csv.reader(io.StringIO(head.decode(ENCODING, errors="replace")), delimiter=_sep(fmt)), [])


def _sep(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _csv_reader(path: Path, fmt: str, **kwargs):
    return pd.read_csv(path, sep=_sep(fmt), dtype=str, keep_default_na=False,
                       encoding=ENCODING, encoding_errors=FALLBACK, **kwargs)


def _jsonl_reader(path: Path, **kwargs):
    return pd.read_json(path, lines=True, dtype=False, encoding=ENCODING, encoding_errors=FALLBACK,
                        **JSON_DATES, **kwargs)


@contextmanager
def _reading(path: Path, fmt: str):
    """Turn the parsers' and decompressors' exceptions into one-line UserErrors."""
    try:
        yield
    except UserError:
        raise
    except pd.errors.ParserError as e:
        raise UserError(f"cannot parse {path.name}: {_last_line(e)}; check the delimiter, and that texts "
                        "holding the delimiter, quotes or newlines are in double quotes") from None
    except (ValueError, pa.ArrowException) as e:
        kind = {"jsonl": "JSON lines (one JSON object per line)", "parquet": "Parquet"}.get(fmt, fmt.upper())
        raise UserError(f"cannot parse {path.name} as {kind}: {_last_line(e)}") from None
    except PermissionError:
        raise UserError(f"cannot read {path.name}: permission denied; check the file's permissions") from None
    except DAMAGED as e:
        raise UserError(f"cannot read {path.name}: the file is damaged, truncated or not what its name says "
                        f"({_last_line(e)})") from None


def _last_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1][:160] if lines else type(error).__name__


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table file, read from its header (or first rows) only."""
    path, fmt = _checked(path)
    with _reading(path, fmt):
        if fmt == "parquet":
            names = pq.ParquetFile(path).schema_arrow.names
            _check_repeats(names, path)
            return names
        head = _peek(path)
        if fmt == "jsonl":  # JSON lines have no header: the keys of the first rows stand for it
            with _jsonl_reader(path, chunksize=100) as reader:
                return [str(c) for c in next(iter(reader)).columns]
        _check_repeats(_raw_csv_header(head, fmt), path)
        return [str(c) for c in _csv_reader(path, fmt, nrows=0).columns]


def _check_columns(path: Path, fmt: str, have: list[str], wanted: list[str]) -> None:
    for column in (c for c in wanted if c not in have):
        if len(have) == 1 and fmt in ("csv", "tsv") and max(map(have[0].count, DELIMITERS)):
            raise UserError(_delimiter_message(path, fmt, have[0]))
        lowered = {h.lower(): h for h in have}
        close = difflib.get_close_matches(column.lower(), list(lowered), n=1, cutoff=0.5)
        hint = f"; did you mean {lowered[close[0]]!r}?" if close else "."
        raise UserError(f"{path.name} has no column {column!r} (its columns: {', '.join(map(repr, have[:30]))})"
                        f"{hint} Choose the column with --text-column / --label-column")


def _delimiter_message(path: Path, fmt: str, header: str) -> str:
    found = max(DELIMITERS, key=header.count)
    fix = {"\t": "name it .tsv", ",": "name it .csv"}.get(found, "save it with commas (.csv) or tabs (.tsv)")
    return (f"{path.name} parsed to a single column {header[:60]!r}: it seems to be separated by "
            f"{DELIMITERS[found]}, not {'tabs' if fmt == 'tsv' else 'commas'}; {fix}")


def _read_whole(path: Path, fmt: str, columns: list[str] | None) -> pd.DataFrame:
    if fmt == "parquet":
        return pq.read_table(path, columns=columns).to_pandas()
    if fmt == "jsonl":
        frame = _jsonl_reader(path)
        return frame.reindex(columns=columns) if columns else frame
    return _csv_reader(path, fmt, usecols=columns)


def _read_chunks(path: Path, fmt: str, chunk_rows: int,
                 columns: list[str] | None) -> Iterator[tuple[pd.DataFrame, float]]:
    """(chunk, fraction of the file read so far): for Parquet rows over the row count in its footer, exact;
    for text, the position in the file on disk (compressed bytes for a compressed one), a close estimate
    that reaches 1.0 with the last chunk."""
    if fmt == "parquet":
        file = pq.ParquetFile(path)
        total, done = max(file.metadata.num_rows, 1), 0
        for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
            done += batch.num_rows
            yield batch.to_pandas(), done / total
        return
    size = max(path.stat().st_size, 1)
    with open(path, "rb") as raw, _decompressed(raw, path) as stream:
        if fmt == "jsonl":
            # a key absent from every row of one chunk is still a column, of missing values
            reader = _jsonl_reader(stream, chunksize=chunk_rows, compression=None)
        else:
            reader = _csv_reader(stream, fmt, usecols=columns, chunksize=chunk_rows, compression=None)
        with reader:
            for chunk in reader:
                if fmt == "jsonl" and columns:
                    chunk = chunk.reindex(columns=columns)
                yield chunk, min(raw.tell() / size, 1.0)


@contextmanager
def _decompressed(raw, path: Path):
    opener = OPENERS.get(path.suffix.lower())
    if opener is None:
        yield raw
        return
    with opener(raw, "rb") as stream:
        yield stream


def _warn_fallback(path: Path, since: int, where: str = "") -> bool:
    extra = _fallback_bytes() - since
    if extra > 0:
        warnings.warn(f"{path.name} is not valid UTF-8{where}: read {extra} byte(s) as Latin-1; "
                      "check accented characters, or save the file as UTF-8", DataWarning, stacklevel=3)
    return extra > 0


def read_table(path: str | Path, *, columns: list[str] | None = None) -> pd.DataFrame:
    """The whole table; only `columns`, in that order, when given (each must exist).

    CSV/TSV cells are strings and an empty cell is "" ("NA" stays text); JSON lines and Parquet keep their
    types, with None or NaN for a missing value.
    """
    path, fmt = _checked(path)
    columns = list(dict.fromkeys(columns)) if columns else None
    _check_columns(path, fmt, table_columns(path), columns or [])
    since = _fallback_bytes()
    with _reading(path, fmt):
        frame = _read_whole(path, fmt, columns)
    _warn_fallback(path, since)
    if len(frame) == 0:
        raise UserError(f"{path.name} has a header but no data rows")
    return frame[columns] if columns else frame


def iter_table(path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, columns: list[str] | None = None,
               text_column: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the table in DataFrames of at most `chunk_rows` rows, never holding the whole file.

    Each chunk's index is the absolute 0-based data-row number, and `chunk.attrs["fraction_read"]` the part
    of the file read so far (1.0 with the last chunk), from which a progress bar estimates the row count.
    `columns` as in `read_table`; `text_column` must exist and its cells come out as strings ("" for a
    missing value).
    """
    if chunk_rows < 1:
        raise UserError(f"the chunk size must be at least 1 row, not {chunk_rows}")
    path, fmt = _checked(path)
    columns = list(dict.fromkeys(columns)) if columns else None
    _check_columns(path, fmt, table_columns(path), [*(columns or []), *([text_column] if text_column else [])])
    start, since, warned = 0, _fallback_bytes(), False
    with _reading(path, fmt):
        for chunk, fraction in _read_chunks(path, fmt, chunk_rows, columns):
            if len(chunk) == 0:  # pandas counts blank JSON lines as rows, then drops them
                continue
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            chunk.attrs["fraction_read"] = fraction
            if text_column:
                chunk[text_column] = chunk[text_column].map(as_text)
            warned = warned or _warn_fallback(path, since, f" (from about row {start})")
            start += len(chunk)
            yield chunk
    if start == 0:
        raise UserError(f"{path.name} has a header but no data rows")


def as_text(value) -> str:
    """A cell as a string: "" for None / NaN / NA, "3" for the float 3.0 that a missing value makes of an int."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)
