"""Bytes → text: the one decoding rule for every file a user gives, on the command line or as an upload.

UTF-8 (a BOM is dropped), or UTF-16 when the bytes start with its BOM. Bytes that are not UTF-8 are read as
Windows-1252 (Latin-1 for the five bytes it leaves undefined) rather than rejected: real exports mix the two
(one row pasted from a Windows program into a UTF-8 file), and only the offending bytes are read that way.
Each file that needed it gets one warning saying how many bytes were.
"""
from __future__ import annotations

import codecs
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pipelines.errors import UserError

ENCODING = "utf-8-sig"
FALLBACK = "txl-windows-1252"  # the codec error handler, for bytes.decode, open() and pandas' encoding_errors
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
SAMPLE_CHARS = 1 << 16  # the part of a text the binary check looks at
BINARY_MAGIC = {b"%PDF-": " (it is a PDF)", b"PK\x03\x04": " (it is a zip archive, e.g. a .docx)"}

_decoding = threading.local()  # pandas decodes in the calling thread, so a per-thread count is exact


def _windows_1252(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: the offending bytes as Windows-1252, or Latin-1 for the five it leaves undefined."""
    _decoding.fallback_bytes = fallback_bytes() + error.end - error.start
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b)
                   for b in error.object[error.start:error.end]), error.end


codecs.register_error(FALLBACK, _windows_1252)


def fallback_bytes() -> int:
    """Bytes this thread has read through the fallback so far; a reader compares it before and after."""
    return getattr(_decoding, "fallback_bytes", 0)


def encoding_of(head: bytes) -> tuple[str, str]:
    """(encoding, error handler) for a file that starts with `head`."""
    if head.startswith(UTF16_BOMS):
        return "utf-16", "replace"  # a BOM makes UTF-16 certain: a stray byte is damage, not another encoding
    return ENCODING, FALLBACK


def decode(data: bytes) -> tuple[str, int]:
    """The text of `data` by the rule above, and how many bytes the fallback read."""
    encoding, errors = encoding_of(data)
    since = fallback_bytes()
    text = data.decode(encoding, errors=errors)
    return text, fallback_bytes() - since


def text_lines(stream: BinaryIO, *, block: int = 1 << 16) -> Iterator[str]:
    """The lines of a binary stream decoded by the rule above, without their "\\n". They are split at "\\n"
    only, as pandas splits JSON lines: a text may hold U+2028 or a lone "\\r"."""
    data = stream.read(block)
    encoding, errors = encoding_of(data)
    decoder, rest = codecs.getincrementaldecoder(encoding)(errors), ""
    while data:
        *lines, rest = (rest + decoder.decode(data)).split("\n")
        yield from lines
        data = stream.read(block)
    yield rest + decoder.decode(b"", final=True)


def fallback_note(name: str, count: int, where: str = "") -> str:
    """The one warning for a file with `count` bytes that are not UTF-8."""
    return (f"{name} is not valid UTF-8{where}: read {count} byte(s) as Windows-1252 (Latin-1 for the bytes it "
            "leaves undefined); check accented characters, or save the file as UTF-8")


def looks_binary(text: str) -> bool:
    """A NUL, or more than 10% control characters other than whitespace: prose and tables have next to none.
    Without this check binary data (or UTF-16 without its BOM) reads as garbage and fails later, puzzlingly."""
    sample = text[:SAMPLE_CHARS]
    controls = sum(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v" for c in sample)
    return "\0" in sample or controls > 0.1 * len(sample)


NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN",
                    "IDEOGRAPHIC", "YI")


def not_prose(text: str) -> str | None:
    """Why `text` (a sample of documents) is probably not language, or None: many control, unassigned or
    private-use characters (or U+FFFD), almost no spaces in a script that uses them (base64, hex, minified
    data), or letters of many scripts with none dominant (random Unicode, or text decoded with the wrong
    encoding). A model trains on such text without complaint and learns nothing that transfers."""
    sample = text[:SAMPLE_CHARS]
    if len(sample) < 1000:
        return None
    odd = sum(c == "\ufffd" or unicodedata.category(c) in ("Cn", "Co", "Cs")
              or (unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v") for c in sample)
    if odd > 0.05 * len(sample):
        return f"{odd / len(sample):.0%} of its characters are control, unassigned or private-use ones"
    letters = [c for c in sample if c.isalpha()]
    scripts: dict[str, int] = {}
    for c in letters:
        script = unicodedata.name(c, "UNKNOWN").split(" ")[0]
        scripts[script] = scripts.get(script, 0) + 1
    unspaced = sum(n for script, n in scripts.items() if script in NO_SPACE_SCRIPTS)
    spaces = sum(c.isspace() for c in sample)
    if spaces < 0.02 * len(sample) and unspaced < 0.3 * max(len(letters), 1):
        return (f"it has almost no spaces (words of {len(sample) / max(spaces, 1):,.0f} characters on average), "
                "like encoded data (base64, hex)")
    if len(scripts) >= 8 and max(scripts.values()) < 0.5 * len(letters):
        return f"it mixes letters of {len(scripts)} scripts with none dominant, like random characters"
    return None


def check_not_binary(name: str, head: bytes, text: str, *, what: str) -> None:
    """Refuse `name` (whose first bytes are `head`, decoded `text`) when it looks binary; `what` it should be."""
    if looks_binary(text):
        hint = next((h for magic, h in BINARY_MAGIC.items() if head.startswith(magic)), "")
        raise UserError(f"{name} looks like a binary file, not {what}{hint}; save it as UTF-8 text, or give the "
                        "file its real extension")


@dataclass(frozen=True)
class DecodedText:
    """A whole text file: `text` with newlines as "\\n", and `notes` for the user (the fallback warning)."""
    text: str
    notes: list[str] = field(default_factory=list)


def decode_text(name: str, data: bytes) -> DecodedText:
    """The text of the file `name` with content `data`; a UserError when it looks binary."""
    text, fallen_back = decode(data)
    check_not_binary(name, data, text, what="text")
    notes = [fallback_note(name, fallen_back)] if fallen_back else []
    return DecodedText(text.replace("\r\n", "\n").replace("\r", "\n"), notes)
