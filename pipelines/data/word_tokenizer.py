"""The reference's word-level tokenization behind the interface the pipelines use for subword tokenizers.

A classifier fine-tuned from `transfo-xl-wt103` must read text exactly as its pre-training did, with the
reference's Moses-based word tokenizer (`txl_core.word_vocab.WordTokenizer`). The pipelines call a small
part of `tokenizers.Tokenizer` (`encode_batch`, `get_vocab_size`, `to_str`, offsets for the explanation
view); `WordLevelTokenizer` provides exactly that part. In a model directory it is stored as
`tokenizer.json` holding `{"txl_word_tokenizer": {...}}`: plain JSON, never a pickle.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from txl_core.word_vocab import WordTokenizer

MARKER = "txl_word_tokenizer"
# Moses escapes and the reference's number/dash splits, back to the characters they stand for.
_SURFACE = {"&amp;": "&", "&#124;": "|", "&lt;": "<", "&gt;": ">", "&apos;": "'", "&quot;": '"',
            "&#91;": "[", "&#93;": "]", "@-@": "-", "@,@": ",", "@.@": "."}
_SEARCH_WINDOW = 200  # characters ahead a token's surface form is looked for when computing offsets


@dataclass
class WordEncoding:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]


def _offsets(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    """Character span of each token in `text`, found left to right. Moses may rewrite characters (quotes,
    dashes); a token whose surface form is not found nearby gets an empty span at the cursor."""
    spans, cursor = [], 0
    for token in tokens:
        surface = _SURFACE.get(token, token)
        at = text.find(surface, cursor, cursor + _SEARCH_WINDOW + len(surface))
        if at < 0:
            spans.append((cursor, cursor))
            continue
        spans.append((at, at + len(surface)))
        cursor = at + len(surface)
    return spans


class WordLevelTokenizer:
    """`tokenizers.Tokenizer`-compatible wrapper (the methods the pipelines call) of a `WordTokenizer`."""

    def __init__(self, word: WordTokenizer):
        self.word = word

    def encode(self, text: str, add_special_tokens: bool = False) -> WordEncoding:
        tokens = self.word.tokenize(text if isinstance(text, str) else "")
        return WordEncoding([self.word.token_to_id(t) for t in tokens], tokens, _offsets(text or "", tokens))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[WordEncoding]:
        return [self.encode(t) for t in texts]

    def get_vocab_size(self) -> int:
        return self.word.vocab_size

    def to_str(self) -> str:
        fields = {f.name: getattr(self.word, f.name) for f in dataclasses.fields(self.word)}
        if fields["sym2idx"] == {s: i for i, s in reversed(list(enumerate(self.word.idx2sym)))}:
            fields["sym2idx"] = None  # the default mapping; spelled out only when a pickle made it differ
        return json.dumps({MARKER: fields}, ensure_ascii=False)

    @classmethod
    def from_str(cls, text: str) -> "WordLevelTokenizer":
        return cls(WordTokenizer(**json.loads(text)[MARKER]))


def load_tokenizer(path: str | Path):
    """A `tokenizer.json`: a Hugging Face `tokenizers` file or this project's word tokenizer. Documents are
    never truncated or padded by the tokenizer, whatever the file asks for."""
    text = Path(path).read_text(encoding="utf-8")
    if f'"{MARKER}"' in text[:40]:
        return WordLevelTokenizer.from_str(text)
    tokenizer = Tokenizer.from_str(text)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
