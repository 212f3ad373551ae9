"""Where a table comes from: a file on disk or an upload's bytes, its format by name, and its bytes opened.

A `Source` lets one reader serve `txl` (paths) and the app (bytes held in memory, never written to disk).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
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
    if path is not None:
        check_readable(path, f"give the path of a table file ({SUPPORTED})")
    fmt = table_format(source)
    if source.size == 0:
        raise UserError(f"{source.name} is empty; it needs a header row and at least one data row")
    return source, fmt


def check_readable(path: Path, what: str) -> None:
    """A one-line UserError unless `path` is a regular file this process may read: a folder, a pipe or device
    (such as /dev/stdin), a symbolic link that loops or leads nowhere, and a file without read permission are
    each named for what they are (`what`: what to give instead, for a folder)."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link that loops back on itself; point it at a file") from None
        if os.path.islink(path):
            raise UserError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; fix the "
                            "link or pass the file itself") from None
        if e.errno == errno.EACCES:
            raise UserError(f"{path} cannot be reached: permission denied on a folder of its path") from None
        raise UserError(f"file {path} not found; check the path (relative paths start at {Path.cwd()})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a folder; {what}")
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode) or stat.S_ISBLK(mode):
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UserError(f"{path} is {kind}, not a file: txl reads its input more than once (to count and to "
                        "resume); save the data to a file and pass that")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path} cannot be read (permission denied); fix its permissions or copy it")


def _compression(source: Source):
    return OPENERS.get(PurePath(source.name).suffix.lower())


def max_row_bytes() -> int:
    """The longest row a table may hold, in bytes once decompressed: TXL_MAX_DOC_MB megabytes (default 64). A
    document this long is read flat by the model, but a row is parsed whole, so the limit bounds the memory a
    small (compressed) file can take."""
    return int(_positive("TXL_MAX_DOC_MB", DEFAULT_MAX_DOC_MB, "a number of megabytes") * 1e6)


def _positive(name: str, default: float, what: str) -> float:
    """The environment variable `name` as a positive, finite number (`default` when unset)."""
    raw = os.environ.get(name)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < 1e12:
        raise UserError(f"{name}={raw!r} is not {what}: give a positive number below 1e12, or unset it for the "
                        f"default ({default:g})")
    return value


DEFAULT_MAX_DOC_MB = 64
DEFAULT_MAX_EXPANSION = 100  # xz makes 3-5:1 of prose and 10-20:1 of repetitive tables; bombs make 1,000:1 and more
EXPANSION_FLOOR = 100_000_000  # any compressed file may expand to this many bytes, whatever its ratio


def max_expansion() -> float:
    """How many times its stored size a compressed file may expand to, past `EXPANSION_FLOOR` bytes:
    TXL_MAX_EXPANSION (default 100)."""
    return _positive("TXL_MAX_EXPANSION", DEFAULT_MAX_EXPANSION, "a ratio")


class Expansion(io.RawIOBase):
    """A decompressed stream that refuses to expand more than `max_expansion` times the compressed bytes read so
    far (`raw`'s position), once past `EXPANSION_FLOOR`: a file of a few hundred KB cannot turn into hours of
    work or gigabytes of rows (a compression bomb), whatever the command does with its rows."""

    def __init__(self, stream: BinaryIO, raw: BinaryIO, name: str):
        super().__init__()
        self.stream, self.raw, self.name = stream, raw, name
        self.ratio, self.out = max_expansion(), 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.stream.close()  # the decompressor; `raw` belongs to the caller
        super().close()

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        self._count(len(data))
        return len(data)

    def _count(self, n: int) -> None:
        self.out += n
        check_expansion(self.name, self.out, self.raw.tell(), self.ratio)


def check_expansion(name: str, out: int, stored: int, ratio: float | None = None) -> int:
    """`out` (bytes decompressed or decoded so far, from `stored` bytes of the file), refused past the bound:
    `EXPANSION_FLOOR`, then `ratio` (`max_expansion`) times `stored`. The one rule for every compressed file and
    for Parquet, which compresses and dictionary-encodes inside."""
    ratio = max_expansion() if ratio is None else ratio
    if out > EXPANSION_FLOOR and out > ratio * max(stored, 1):
        raise UserError(f"{name} expands over {ratio:g}:1 ({out / 1e6:,.0f} MB from {stored / 1e3:,.0f} KB), like "
                        "a compression bomb; if it is genuine, set TXL_MAX_EXPANSION to a larger ratio")
    return out


_PROBED: set = set()  # small files read whole once already, without passing the bound


def probe_once(source: Source, probe) -> None:
    """Call `probe` (a whole reading through `check_expansion`) before any work the first time a file small
    enough to be a bomb is opened: its readers open it several times (peek, header, rows)."""
    if source.size * max_expansion() > EXPANSION_FLOOR:
        return  # a larger file is checked as it is read
    key = _probe_key(source)
    if key not in _PROBED:
        probe()
        _PROBED.add(key)


def _probe_key(source: Source) -> tuple:
    """A file by path, size and modification time; an upload by its bytes."""
    if source.path is None:
        return source.name, hash(source.data)
    st = source.path.stat()
    return str(source.path), st.st_size, st.st_mtime_ns


def decompressed(opener, raw: BinaryIO, name: str) -> BinaryIO:
    """`raw`'s bytes decompressed by `opener` (gzip.open, lzma.open, ...), with the `Expansion` check."""
    return io.BufferedReader(Expansion(opener(raw, "rb"), raw, name))


class RowCapped(io.RawIOBase):
    """A table's decompressed bytes, refusing a row longer than `limit` bytes as soon as it is read past it (a
    row of CSV ends at a newline outside double quotes; a JSON line at any newline)."""

    def __init__(self, stream: BinaryIO, name: str, limit: int, *, quoted: bool):
        super().__init__()
        self.stream, self.name, self.limit, self.quoted = stream, name, limit, quoted
        self.run, self.odd = 0, False  # bytes of the row being read; inside a quoted field

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        self._check(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self._check(data)
        return data

    def _check(self, data: bytes) -> None:
        if not data:
            return
        if self.run + len(data) <= self.limit and b"\n" in data and not self.quoted:
            self.run = len(data) - data.rfind(b"\n") - 1  # no row of this block can be over the limit
            return
        start = 0
        while True:  # row by row (a block of CSV may end rows inside quotes)
            i = data.find(b"\n", start)
            end = len(data) if i < 0 else i
            if self.quoted:
                self.odd ^= bool(data.count(b'"', start, end) & 1)
            self.run += end - start
            if self.run > self.limit:
                raise UserError(f"{self.name} holds a row over {self.limit / 1e6:g} MB; such a document is refused "
                                "to keep memory bounded: set TXL_MAX_DOC_MB to a larger number of megabytes to "
                                "read it")
            if i < 0:
                return
            self.run = self.run + 1 if self.odd else 0
            start = i + 1


@contextmanager
def opened(source: Source) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(raw, stream): the stored bytes, whose position tells how much is read, and the decompressed ones, whose
    rows are at most `max_row_bytes` long (`RowCapped`)."""
    opener, fmt = _compression(source), table_format(source)

    def capped(stream: BinaryIO) -> BinaryIO:  # Parquet is read by seeking, in row groups: not a text stream
        if fmt not in ("csv", "tsv", "jsonl"):
            return stream
        return io.BufferedReader(RowCapped(stream, source.name, max_row_bytes(), quoted=fmt != "jsonl"))

    with source.open() as raw:
        if opener is None:
            yield raw, capped(raw)
            return
        def probe() -> None:
            with decompressed(opener, raw, source.name) as stream:
                while stream.read(1 << 20):
                    pass
            raw.seek(0)

        probe_once(source, probe)
        with decompressed(opener, raw, source.name) as stream:
            yield raw, capped(stream)
