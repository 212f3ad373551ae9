"""Where a table comes from: a file on disk or an upload's bytes, its format by name, and its bytes opened.

A `Source` lets one reader serve `txl` (paths) and the app (bytes held in memory, never written to disk).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from pipelines.errors import UserError

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


@dataclass(frozen=True)
class Source:
    """A table to read: `path` on disk, or `data` in memory. `name` is what messages call it and what its
    format is read from: the file name of a path, the name an upload came with."""
    name: str
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def of(cls, source: str | Path | Source) -> Source:
        """A Source as given, or the file at a path."""
        if isinstance(source, Source):
            return source
        return cls(Path(source).name, path=Path(source))

    @classmethod
    def upload(cls, name: str, data: bytes) -> Source:
        return cls(name, data=data)

    @property
    def size(self) -> int:
        """Bytes as stored (compressed ones for a compressed file)."""
        return len(self.data) if self.path is None else self.path.stat().st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data)


def table_format(source: str | Path | Source) -> str:
    """'csv', 'tsv', 'jsonl' or 'parquet', from the file name."""
    name = Source.of(source).name
    suffixes = [s.lower() for s in PurePath(name).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in OPENERS
    if compressed:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compressed and fmt == "parquet"):  # Parquet compresses inside the file
        raise UserError(f"cannot read {name}: unsupported file type; use {SUPPORTED}")
    return fmt


def checked(source: str | Path | Source) -> tuple[Source, str]:
    """The source and its format, once it is known to exist, be supported and not be empty."""
    source = Source.of(source)
    path = source.path
    if path is not None and path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a table file ({SUPPORTED})")
    if path is not None and not path.is_file():
        raise UserError(f"file {path} not found; check the path (relative paths start at {Path.cwd()})")
    fmt = table_format(source)
    if source.size == 0:
        raise UserError(f"{source.name} is empty; it needs a header row and at least one data row")
    return source, fmt


def _compression(source: Source):
    return OPENERS.get(PurePath(source.name).suffix.lower())


@contextmanager
def opened(source: Source) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(raw, stream): the stored bytes, whose position tells how much is read, and the decompressed ones."""
    opener = _compression(source)
    with source.open() as raw:
        if opener is None:
            yield raw, raw
            return
        with opener(raw, "rb") as stream:
            yield raw, stream
