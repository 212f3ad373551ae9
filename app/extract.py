"""Uploaded file → documents: the one place where the app turns a user's bytes into text.

Plain text, Markdown, HTML, PDF and DOCX give one document (read here); CSV, TSV, JSONL and Parquet give one
per row (`app/tables.py`). Bytes become text, and tables rows, by `txl`'s own code (`pipelines.data`), so an
upload reads as the same file given to `txl` does.
Everything happens in memory; nothing is written to disk. Every problem a user can fix is an `ExtractError`
whose one-line message says what to do. Third-party parsers (pypdf, python-docx) raise many exception types
on a damaged file; those become an `ExtractError` too, since the cause is the file.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Iterator

import docx
from docx.table import Table as DocxTable
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

from app.decode import Document, ExtractError, ExtractResult, brief, decode_text, mb
from app.tables import table_result

__all__ = ["Document", "ExtractError", "ExtractResult", "check_zip", "decode_text", "docx_text", "extract_documents",
           "html_text", "max_upload_bytes", "pdf_text"]

MAX_UPLOAD_BYTES = 50 * 2**20
UPLOAD_LIMIT_ENV = "TXL_MAX_UPLOAD_MB"
MAX_UNPACKED_BYTES = 200 * 2**20  # what a .docx or .parquet may expand to in memory
MAX_ZIP_RATIO = 100  # deflated Word XML reaches ~5-20:1; zip bombs reach 1000:1
ZIP_RATIO_FLOOR = 2**20  # members that unpack to less than this are harmless at any ratio
TEXT_SUFFIXES = (".txt", ".md", ".html", ".htm")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + (".pdf", ".docx") + TABLE_SUFFIXES
HIDDEN_TAGS = frozenset({"script", "style", "template"})
BLOCK_TAGS = frozenset("address article aside blockquote br caption dd div dl dt figcaption figure footer form "
                       "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr title ul".split())


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
        raise ExtractError(f"{name} is {mb(len(data))}, over the {mb(max_bytes)} upload limit; split it, or "
                           f"raise the limit with the environment variable {UPLOAD_LIMIT_ENV} (in MB)")
    if not data.strip():
        raise ExtractError(f"{name}: the document is empty")
    if suffix in TABLE_SUFFIXES:
        return table_result(name, data, text_column=text_column, max_unpacked_bytes=max_unpacked_bytes)
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
        raise ExtractError(f"{name}: the PDF is damaged ({brief(e)}); export or download it again") from None
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
        raise ExtractError(f"{name} is not a valid {kind} (damaged zip archive: {brief(e)})") from None
    total = sum(m.file_size for m in members)
    if total > max_unpacked_bytes:
        raise ExtractError(f"{name} unpacks to {mb(total)}, over the {mb(max_unpacked_bytes)} limit for a {kind}; "
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
        raise ExtractError(f"{name} is not a valid .docx ({brief(e)}); open it in Word and save it as .docx again"
                           ) from None


def _docx_blocks(container) -> Iterator[str]:
    for block in container.iter_inner_content():
        if isinstance(block, DocxTable):
            for row in block.rows:
                cells = dict.fromkeys(row.cells)  # a merged cell appears once per grid column it spans
                yield "\t".join("\n".join(_docx_blocks(cell)) for cell in cells)
        else:
            yield block.text
