"""Uploaded file → documents: the one place where the app turns a user's bytes into text.

Plain text, Markdown, HTML, PDF and DOCX give one document; CSV, TSV, JSONL and Parquet give one per row.
Everything happens in memory; nothing is written to disk. Every problem a user can fix is an `ExtractError`
whose one-line message says what to do. Third-party parsers (pypdf, python-docx, pyarrow) raise many
exception types on a damaged file; those become an `ExtractError` too, since the cause is the file.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Iterator

import docx
import pandas as pd
import pyarrow.parquet as pq
from docx.table import Table as DocxTable
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

MAX_UPLOAD_BYTES = 50 * 2**20
UPLOAD_LIMIT_ENV = "TXL_MAX_UPLOAD_MB"
MAX_UNPACKED_BYTES = 200 * 2**20  # what a .docx or .parquet may expand to in memory
MAX_ZIP_RATIO = 100  # deflated Word XML reaches ~5-20:1; zip bombs reach 1000:1
ZIP_RATIO_FLOOR = 2**20  # members that unpack to less than this are harmless at any ratio
TEXT_SUFFIXES = (".txt", ".md", ".html", ".htm")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + (".pdf", ".docx") + TABLE_SUFFIXES
TEXT_COLUMN_NAMES = ("text", "body", "content", "document")  # preferred, in this order
BINARY_MAGIC = {b"%PDF-": " (it is a PDF)", b"PK\x03\x04": " (it is a zip archive, e.g. a .docx)"}
HIDDEN_TAGS = frozenset({"script", "style", "template"})
BLOCK_TAGS = frozenset("address article aside blockquote br caption dd div dl dt figcaption figure footer form "
                       "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr title ul".split())


class ExtractError(ValueError):
    """What is wrong with an uploaded file and what to do, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, whatever a library put into it


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass
class ExtractResult:
    """documents: one per file, or one per table row named `<file>#<row>` (1 = first data row).
    columns: for tables, the text-like columns a user may pick from; text_column: the one used.
    warnings: short notes for the user (fallback decoding, skipped rows or pages)."""
    documents: list[Document]
    columns: list[str] = field(default_factory=list)
    text_column: str | None = None
    warnings: list[str] = field(default_factory=list)


def max_upload_bytes(environ=os.environ) -> int:
    """The upload limit: `TXL_MAX_UPLOAD_MB` megabytes when that variable is set, else 50 MB."""
    raw = environ.get(UPLOAD_LIMIT_ENV, "").strip()
    try:
        megabytes = float(raw) if raw else MAX_UPLOAD_BYTES / 2**20
    except ValueError:
        megabytes = 0.0
    if not 0 < megabytes < float("inf"):
        raise ExtractError(f"{UPLOAD_LIMIT_ENV}={raw!r} is not a positive number of megabytes; fix or unset it")
    return int(megabytes * 2**20)


def extract_documents(name: str, data: bytes, *, text_column: str | None = None,
                      max_bytes: int = MAX_UPLOAD_BYTES, max_unpacked_bytes: int = MAX_UNPACKED_BYTES
                      ) -> ExtractResult:
    """Documents in the uploaded file `name` with content `data`.

    text_column: for tables, the column holding the text (default: text/body/content/document, else the
    text-like column with the longest mean length). max_unpacked_bytes: what a .docx or .parquet may expand to.
    Raises ExtractError for anything the user has to fix."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ExtractError(f"{name}: cannot read {suffix or 'files without an extension'}; "
                           f"upload one of {', '.join(SUPPORTED_SUFFIXES)}")
    if len(data) > max_bytes:
        raise ExtractError(f"{name} is {_mb(len(data))}, over the {_mb(max_bytes)} upload limit; split it, or "
                           f"raise the limit with the environment variable {UPLOAD_LIMIT_ENV} (in MB)")
    if not data.strip():
        raise ExtractError(f"{name}: the document is empty")
    if suffix in TABLE_SUFFIXES:
        return _table_result(name, suffix, data, text_column=text_column, max_unpacked_bytes=max_unpacked_bytes)
    if suffix == ".pdf":
        text, warnings = pdf_text(name, data)
    elif suffix == ".docx":
        text, warnings = docx_text(name, data, max_unpacked_bytes=max_unpacked_bytes), []
    else:
        text, warnings = decode_text(name, data)
        text = html_text(text) if suffix in (".html", ".htm") else text
    if not text.strip():
        raise ExtractError(f"{name}: the document is empty (no visible text)")
    return ExtractResult([Document(name, text.strip())], warnings=warnings)


def decode_text(name: str, data: bytes) -> tuple[str, list[str]]:
    """Text and warnings. UTF-8 (BOM dropped), or UTF-16 with a BOM; bytes that are not UTF-8 are read as
    Windows-1252, or Latin-1 for the five bytes it leaves undefined: an upload is never rejected for its encoding."""
    warnings = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:  # only the offending bytes: a UTF-8 file with one pasted Latin-1 line stays UTF-8
            text = data.decode("utf-8-sig", errors=WINDOWS_1252_FALLBACK)
            warnings.append(f"{name}: not valid UTF-8; decoded as Latin-1 (Windows-1252)")
    if _looks_binary(text):
        hint = next((h for magic, h in BINARY_MAGIC.items() if data.startswith(magic)), "")
        raise ExtractError(f"{name} looks like a binary file, not text{hint}; upload it with its real extension")
    return text.replace("\r\n", "\n").replace("\r", "\n"), warnings


def _windows_1252(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: the bytes as Windows-1252, or Latin-1 for the five bytes it leaves undefined."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b)
                   for b in error.object[error.start:error.end]), error.end


WINDOWS_1252_FALLBACK = "txl-app-windows-1252"
codecs.register_error(WINDOWS_1252_FALLBACK, _windows_1252)


def _looks_binary(text: str) -> bool:
    """More than 10% control characters other than whitespace, NUL included; prose has next to none."""
    sample = text[:65536]
    controls = sum(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v" for c in sample)
    return controls > 0.1 * len(sample)


class _VisibleText(HTMLParser):
    """Text a browser shows: script/style/template content dropped, runs of whitespace collapsed as HTML
    does (kept inside <pre>), a line break at each block element, a space between table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        self._tag(tag, +1)

    def handle_endtag(self, tag):
        self._tag(tag, -1)

    def _tag(self, tag: str, step: int) -> None:
        if tag in HIDDEN_TAGS:
            self.hidden = max(0, self.hidden + step)
        self.pre = max(0, self.pre + step) if tag == "pre" else self.pre
        if tag in BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in ("td", "th") and step > 0:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(html: str) -> str:
    """The visible text of an HTML page, one line per block; indentation is not kept. The <title> is kept:
    a browser shows it in the tab, and it often names the document's subject."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pdf_text(name: str, data: bytes) -> tuple[str, list[str]]:
    """The text layer of each page, pages joined by blank lines, and warnings for pages without one."""
    if b"%PDF-" not in data[:1024]:  # where the PDF spec's implementation notes allow the header to start
        raise ExtractError(f"{name} is not a PDF (no %PDF header); upload the original file")
    if b"%%EOF" not in data[-1024:]:  # pypdf would guess its way through a cut-off file and lose pages
        raise ExtractError(f"{name}: the PDF is truncated or damaged (no end-of-file marker); download it again")
    try:  # PdfReader tries the empty password itself; pages then fail only when a real one is needed
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except FileNotDecryptedError:
        raise ExtractError(f"{name} is password-protected; save a copy without a password and upload that"
                           ) from None
    except DependencyError:
        raise ExtractError(f"{name} is AES-encrypted, which needs the 'cryptography' package on the server; "
                           "save a copy without protection and upload that") from None
    except Exception as e:  # noqa: BLE001 - see the module docstring
        raise ExtractError(f"{name}: the PDF is damaged ({_brief(e)}); export or download it again") from None
    texts = [t.strip() for t in pages if t.strip()]
    if not texts:
        raise ExtractError(f"{name} has no text layer (a scanned or image-only PDF?); OCR is not supported, "
                           "so run OCR first or export the PDF with text")
    missing = len(pages) - len(texts)
    warnings = [f"{name}: skipped {missing} of {len(pages)} pages without a text layer"] if missing else []
    return "\n\n".join(texts), warnings


def check_zip(name: str, data: bytes, *, kind: str, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a zip-based upload (`kind`, e.g. ".docx") before any library parses it: not a zip, damaged, more
    than `max_unpacked_bytes` in all, or a large member compressed more than MAX_ZIP_RATIO:1. The declared
    sizes can be trusted: zipfile stops at the declared size and fails the CRC check if the data is longer."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ExtractError(f"{name} is not a valid {kind} (not a zip archive); save it as {kind} and upload again")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, NotImplementedError) as e:
        raise ExtractError(f"{name} is not a valid {kind} (damaged zip archive: {_brief(e)})") from None
    total = sum(m.file_size for m in members)
    if total > max_unpacked_bytes:
        raise ExtractError(f"{name} unpacks to {_mb(total)}, over the {_mb(max_unpacked_bytes)} limit for a {kind}; "
                           "refusing to open it (possible zip bomb)")
    for m in members:
        if m.file_size > ZIP_RATIO_FLOOR and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
            raise ExtractError(f"{name}: {m.filename} is compressed {m.file_size // max(m.compress_size, 1)}:1, "
                               f"over the {MAX_ZIP_RATIO}:1 limit; refusing to open it (possible zip bomb)")


def docx_text(name: str, data: bytes, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Paragraphs and table rows (cells joined by tabs) of a Word document, in document order."""
    check_zip(name, data, kind=".docx", max_unpacked_bytes=max_unpacked_bytes)
    try:
        document = docx.Document(io.BytesIO(data))
        return "\n".join(_docx_blocks(document))
    except Exception as e:  # noqa: BLE001 - see the module docstring
        raise ExtractError(f"{name} is not a valid .docx ({_brief(e)}); open it in Word and save it as .docx again"
                           ) from None


def _docx_blocks(container) -> Iterator[str]:
    for block in container.iter_inner_content():
        if isinstance(block, DocxTable):
            for row in block.rows:
                cells = dict.fromkeys(row.cells)  # a merged cell appears once per grid column it spans
                yield "\t".join("\n".join(_docx_blocks(cell)) for cell in cells)
        else:
            yield block.text


def _table_result(name: str, suffix: str, data: bytes, *, text_column: str | None,
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
        raise ExtractError(f"{name}: cannot parse it as a table ({_brief(e)}); check the delimiter and quotes"
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
        raise ExtractError(f"{name} is not a valid Parquet file ({_brief(e)})") from None
    if unpacked > max_unpacked_bytes:
        raise ExtractError(f"{name} unpacks to {_mb(unpacked)}, over the {_mb(max_unpacked_bytes)} limit; "
                           "split it into smaller files")
    _check_header(name, header)
    try:
        return file.read().to_pandas()
    except Exception as e:  # noqa: BLE001
        raise ExtractError(f"{name}: cannot read the Parquet data ({_brief(e)})") from None


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


def _brief(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1][:120] if lines else type(e).__name__


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}".removesuffix(".0") + " MB"
