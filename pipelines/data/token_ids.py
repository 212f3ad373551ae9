"""Token ids (and character offsets) of texts of any length, with memory bounded by settings, not by the text.

A `tokenizers` Encoding keeps strings, offsets and masks per token (about 800 bytes a token: a 1M-token
document took 800 MB to tokenize whole). Here a text longer than `PIECE_CHARS` is encoded in pieces cut just
before whitespace, and only int32 ids (and offsets, when asked) are kept. Every tokenizer this project uses
splits words at whitespace before anything else (byte-level BPE, whose leading-space tokens start the piece
after a cut; WordPiece; the reference's word tokenizer), so the pieces' ids are the whole text's
(tests/test_token_ids.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PIECE_CHARS = 20_000
REACH = 8  # how many pieces' length a cut at a space may lie past the piece
BATCH_TEXTS = 256  # short texts encoded per call: bounds the Encodings alive at once
_CUT = re.compile(r"(?<=\S) ")
_MARK = re.compile(r"(?<=\w)(?=[^\w\s])")


@dataclass(frozen=True)
class Tokens:
    """ids (N,) int32; offsets (N, 2) int32, each token's [start, end) characters in the text, or None."""

    ids: np.ndarray
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _tokens(encoding, shift: int, offsets: bool) -> Tokens:
    ids = np.asarray(encoding.ids, dtype=np.int32)
    if not offsets:
        return Tokens(ids)
    spans = np.asarray(encoding.offsets, dtype=np.int32).reshape(-1, 2) + shift
    return Tokens(ids, spans)


def cuts(text: str, piece_chars: int) -> list[int]:
    """Piece boundaries 0 = c0 < c1 < ... = len(text): each inner one a space that follows a non-space, the
    first at least `piece_chars` after the previous cut. A piece then starts with a space, which byte-level BPE
    reads as the next word's own (it adds no prefix space), and a run of whitespace is never split. Where no
    such space comes within `REACH` more pieces (encoded data, text without spaces), the cut falls before a
    punctuation mark or symbol that follows a letter or digit (every tokenizer here splits there too; byte-level
    BPE then reads the mark with a space before it), or, failing that, inside the run: memory stays bounded,
    and the ids differ from the whole text's only at such cuts."""
    out, start = [0], 0
    while len(text) - start > piece_chars:
        at, until = start + piece_chars, start + piece_chars * (1 + REACH)
        match = _CUT.search(text, at, until)
        if match is None and until >= len(text):
            break
        match = match or _MARK.search(text, at, until)
        start = until if match is None else match.start()
        out.append(start)
    return out + [len(text)]


def _encode_long(tokenizer, text: str, offsets: bool, piece_chars: int) -> Tokens:
    bounds = cuts(text, piece_chars)
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        (encoding,) = tokenizer.encode_batch([text[a:b]], add_special_tokens=False)
        part = _tokens(encoding, a, offsets)
        if offsets and a > 0 and len(part):  # a piece's first token keeps its leading space; the whole text's not
            start, end = part.offsets[0]
            while start < end - 1 and text[start].isspace():
                start += 1
            part.offsets[0, 0] = start
        parts.append(part)
    ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int32)
    spans = np.concatenate([p.offsets for p in parts]) if offsets and parts else None
    return Tokens(ids, spans)


def encode(tokenizer, texts: Sequence[str], *, offsets: bool = False, piece_chars: int = PIECE_CHARS) -> list[Tokens]:
    """`Tokens` of each text (no special tokens, never truncated); "" gives no ids."""
    out: list[Tokens | None] = [None] * len(texts)
    short = [i for i, t in enumerate(texts) if len(t) <= piece_chars]
    for k in range(0, len(short), BATCH_TEXTS):
        rows = short[k:k + BATCH_TEXTS]
        for i, e in zip(rows, tokenizer.encode_batch([texts[i] for i in rows], add_special_tokens=False)):
            out[i] = _tokens(e, 0, offsets)
    for i, t in enumerate(texts):
        if out[i] is None:
            out[i] = _encode_long(tokenizer, t, offsets, piece_chars)
    return out
