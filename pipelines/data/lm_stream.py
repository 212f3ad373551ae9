"""Language-model data and evaluation: text in, one token stream, B parallel streams read segment by segment.

Shapes: B parallel streams, T segment length, M memory length, C = d_model.

As in the paper (and the original `LMOrderedIterator`), documents are concatenated into one stream, each
followed by `<eos>`, and the stream is cut into B contiguous rows; segment i of every row follows segment
i - 1 of the same row, so the memory a segment leaves is the true left context of the next one.
"""
from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.data.bpe_tokenizer import SPECIAL, encode_batch
from pipelines.data.decoding import check_not_binary, decode
from pipelines.data.sources import check_readable, decompressed, max_row_bytes
from pipelines.data.tables import (
    DAMAGED,
    ENCODING,
    FALLBACK,
    FORMATS,
    OPENERS,
    PEEK_BYTES,
    iter_table,
)
from pipelines.errors import UserError
from txl_core import TXLLMHeadModel
from txl_core.memory import Mems

EOS = SPECIAL.index("<eos>")
ENCODE_CHUNK = 2000  # documents per tokenizer call: big enough for its threads, small enough for memory


def _is_table(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in OPENERS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded. A binary file is refused from its first bytes, and a line longer than
    `max_row_bytes` (TXL_MAX_DOC_MB) as soon as it is read past it: memory is bounded by the setting, not by
    the file (a small .xz can hold one line of gigabytes). A compressed file may not expand past
    TXL_MAX_EXPANSION times its size (`sources.Expansion`)."""
    opener = OPENERS.get(path.suffix.lower())
    limit = max_row_bytes()
    try:
        with open(path, "rb") as stored, (decompressed(opener, stored, path.name) if opener else stored) as raw:
            first, size = [], 0
            lines = iter(lambda: raw.readline(limit + 1), b"")
            for line in lines:  # the first lines, up to PEEK_BYTES, are looked at before any is used
                first.append(line)
                size += len(line)
                if size >= PEEK_BYTES:
                    break
            head = b"".join(first)[:PEEK_BYTES]
            check_not_binary(path.name, head, decode(head)[0], what="text")
            for line in itertools.chain(first, lines):
                if len(line) > limit:
                    raise UserError(f"{path.name} has a line longer than {limit / 1e6:g} MB; raise TXL_MAX_DOC_MB "
                                    "to read it, or break the text into lines (each line is one document)")
                yield line.decode(ENCODING, errors=FALLBACK)
    except DAMAGED as e:
        raise UserError(f"cannot read {path.name}: the file is damaged, truncated or not what its name says "
                        f"({str(e).splitlines()[-1][:120] if str(e) else type(e).__name__})") from None


def iter_documents(paths: Iterable[str | Path], *, text_column: str = "text") -> Iterator[str]:
    """Non-blank documents: each line of a plain text file (.txt, .tokens, ... optionally .gz/.xz/.zst/.bz2),
    or each `text_column` cell of a table (csv/tsv/jsonl/parquet). A line is a unit, as in WikiText, where
    a line is a paragraph or a heading; blank lines only separate them."""
    for path in map(Path, paths):
        check_readable(path, "give text files or tables")
        if _is_table(path):
            for chunk in iter_table(path, columns=[text_column], text_column=text_column):
                yield from (t.strip() for t in chunk[text_column] if t.strip())
        else:
            yield from (line.strip() for line in _text_lines(path) if line.strip())


def read_documents(paths: list[str], *, text_column: str = "text") -> list[str]:
    docs = list(iter_documents(paths, text_column=text_column))
    if not docs:
        raise UserError(f"no text in {', '.join(map(str, paths))}: every line (or {text_column!r} cell) is empty")
    return docs


def count_words(docs: Iterable[str]) -> int:
    """Whitespace words plus one `<eos>` per document: the word count behind the paper's word-level
    perplexities (its WikiText vocabularies are the whitespace tokens, and every line ends with `<eos>`)."""
    return sum(len(d.split()) + 1 for d in docs)


def encode_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as one stream of ids, each followed by `<eos>` (id 2): (N,) int64."""
    ids = array("q")
    for start in range(0, len(docs), ENCODE_CHUNK):
        for row in encode_batch(tokenizer, docs[start:start + ENCODE_CHUNK]):
            ids.extend(row)
            ids.append(EOS)
    return torch.frombuffer(ids, dtype=torch.int64).clone() if ids else torch.zeros(0, dtype=torch.int64)


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (B, N // B): row b is the b-th contiguous stretch of the stream; the last N mod B ids are cut."""
    width = stream.numel() // batch_size
    return stream[: width * batch_size].view(batch_size, width)  # (B, N // B)


def n_segments(data: torch.Tensor, segment_len: int) -> int:
    """Segments in a (B, W) batch: every position but the last predicts the next id."""
    return math.ceil((data.size(1) - 1) / segment_len)


def segment(data: torch.Tensor, index: int, segment_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T) and their next-token targets (B, T) of segment `index` (the last one may be shorter)."""
    start = index * segment_len
    end = min(start + segment_len, data.size(1) - 1)
    return data[:, start:end], data[:, start + 1:end + 1]


def segment_nll(model: TXLLMHeadModel, inputs: torch.Tensor, targets: torch.Tensor, *,
                mems: Mems | None) -> tuple[torch.Tensor, Mems]:
    """Per-token NLL (B, T) of one segment and the memory it leaves.

    The head's own `forward(labels=...)` shifts inside the segment, so its last position would go without a
    target; here every position predicts the next id of the stream, the next segment's first one included,
    so each token of the stream is scored exactly once.
    """
    out = model.transformer(inputs, mems=mems)
    hidden = out.last_hidden_state  # (B, T, C)
    nll = model.crit.nll(hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1))
    return nll.view(targets.shape), out.mems  # (B, T)


@contextmanager
def reading_with(model: TXLLMHeadModel, *, mem_len: int, clamp_len: int | None = None):
    """Evaluate with another memory length (and clamp), as the paper does; the config is restored after."""
    cfg = model.config
    saved = cfg.mem_len, cfg.clamp_len
    cfg.mem_len = mem_len
    cfg.clamp_len = saved[1] if clamp_len is None else clamp_len
    try:
        yield model
    finally:
        cfg.mem_len, cfg.clamp_len = saved


@dataclass
class Perplexity:
    """`nll`: total over `tokens` scored tokens; `ppl` = exp(mean NLL per token)."""

    nll: float
    tokens: int
    mem_len: int
    segment_len: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / max(1, self.tokens))


@torch.no_grad()
def perplexity(model: TXLLMHeadModel, stream: torch.Tensor, *, segment_len: int, mem_len: int,
               batch_size: int = 8, clamp_len: int | None = None, progress=None) -> Perplexity:
    """Perplexity of `stream` (N,) read as `batch_size` parallel streams, segment by segment with memory."""
    batch_size = max(1, min(batch_size, stream.numel() // (segment_len + 1) or 1))
    device = next(model.parameters()).device
    data = batchify(stream, batch_size).to(device)  # (B, W)
    if data.size(1) < 2:
        raise UserError(f"the held-out text is too short to measure: {stream.numel()} tokens")
    was_training = model.training
    model.eval()
    total, count, mems = 0.0, 0, None
    with reading_with(model, mem_len=mem_len, clamp_len=clamp_len):
        for i in range(n_segments(data, segment_len)):
            nll, mems = segment_nll(model, *segment(data, i, segment_len), mems=mems if mem_len else None)
            total, count = total + float(nll.double().sum()), count + nll.numel()
            if progress is not None:
                progress(nll.numel())
    model.train(was_training)
    return Perplexity(total, count, mem_len, segment_len)
