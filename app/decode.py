"""What every reader of an upload shares: the error a user can fix, the result types, and the door to the
data layer, whose decoding and table reading `txl` uses too (`pipelines.data`).

Decoding never rejects an upload for its encoding: see `pipelines.data.decoding` for the one rule.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from pipelines.data import decoding
from pipelines.errors import UserError


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


@contextmanager
def as_extract_errors():
    """The data layer's UserError, one line saying what to do, shown by the app as an ExtractError."""
    try:
        yield
    except UserError as e:
        raise ExtractError(str(e)) from None


def decode_text(name: str, data: bytes) -> tuple[str, list[str]]:
    """Text (newlines as "\\n") and warnings, by the rule `txl` reads files with; ExtractError when binary."""
    with as_extract_errors():
        decoded = decoding.decode_text(name, data)
    return decoded.text, decoded.notes


def brief(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1][:120] if lines else type(e).__name__


def mb(n: int) -> str:
    return f"{n / 2**20:.1f}".removesuffix(".0") + " MB"
