"""Uploaded bytes → text, and what every reader of an upload shares: the error a user can fix, the result types.

Decoding never rejects an upload for its encoding: UTF-8 (BOM dropped), UTF-16 with a BOM, and bytes that
are not UTF-8 read as Windows-1252 (Latin-1 for the five bytes it leaves undefined), with a warning.
"""
from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass, field

BINARY_MAGIC = {b"%PDF-": " (it is a PDF)", b"PK\x03\x04": " (it is a zip archive, e.g. a .docx)"}


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


def brief(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1][:120] if lines else type(e).__name__


def mb(n: int) -> str:
    return f"{n / 2**20:.1f}".removesuffix(".0") + " MB"
