"""The classifier's subword tokenizer: byte-level BPE (Hugging Face `tokenizers`) trained on the training texts.

Why byte-level BPE rather than Unigram: its base alphabet is the 256 bytes, so no text (any script, emoji,
control characters, broken encodings) ever meets `<unk>`; it keeps character offsets for the explanation
view; and it trains in seconds on tens of MB. Unigram would need a byte fallback to promise the same.
NFKC folds compatibility forms (full-width letters, ligatures) so that they share tokens with plain text.
Ids: 0 `<pad>`, 1 `<unk>`, 2 `<eos>`; text never encodes to them, even text that spells them.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from pipelines.errors import UserError

SPECIAL = ["<pad>", "<unk>", "<eos>"]  # their ids are their positions: <pad> is 0
MAX_TRAIN_CHARS = 50_000_000  # beyond this, more text barely changes the merges and only costs time
MIN_VOCAB = 256 + len(SPECIAL)  # the byte alphabet and the special tokens
FILE_NAME = "tokenizer.json"


def _as_str(text) -> str:
    return text if isinstance(text, str) else ""


def _sample(texts: Iterable[str], *, limit: int, seed: int) -> Iterator[str]:
    """At most about `limit` characters: a seeded random subset of the documents when `texts` is a sequence
    (a corpus sorted by class must not be cut to its first classes), else the first ones."""
    stream = texts
    if isinstance(texts, Sequence) and not isinstance(texts, str):
        order = list(range(len(texts)))
        if sum(len(_as_str(t)) for t in texts) > limit:
            random.Random(seed).shuffle(order)
        stream = (texts[i] for i in order)
    used = 0
    for text in map(_as_str, stream):
        if used >= limit:
            return
        yield text[: limit - used]  # one huge document cannot blow the budget alone
        used += len(text)


def _new_tokenizer(*, lowercase: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    steps = [normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 16000, min_frequency: int = 2,
                    lowercase: bool = False, max_chars: int = MAX_TRAIN_CHARS, seed: int = 0) -> Tokenizer:
    """Train on (a sample of at most `max_chars` characters of) `texts`; None or empty texts are fine.

    The vocabulary has at most `vocab_size` tokens (fewer on a small corpus), and every byte is one of them.
    """
    if vocab_size < MIN_VOCAB:
        raise UserError(f"the vocabulary size must be at least {MIN_VOCAB} (256 bytes and "
                        f"{len(SPECIAL)} special tokens), not {vocab_size}")
    tok = _new_tokenizer(lowercase=lowercase)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_sample(texts, limit=max_chars, seed=seed), trainer=trainer)
    return _specials_as_plain_vocabulary(tok)


def _specials_as_plain_vocabulary(tok: Tokenizer) -> Tokenizer:
    """Keep the special tokens at ids 0-2 of the vocabulary but stop matching them in text: a document
    holding the characters '<pad>' is text, not padding. The pre-tokenizer splits '<' from letters, so no
    merge can ever rebuild them. (`encode_special_tokens` does the same but is not saved in tokenizer.json.)"""
    data = json.loads(tok.to_str())
    data["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(data))


def save(tok: Tokenizer, directory: str | Path) -> Path:
    """Write `directory`/tokenizer.json (plain JSON, no pickle) and return its path."""
    path = Path(directory) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load(directory: str | Path) -> Tokenizer:
    """The tokenizer in `directory`/tokenizer.json, with truncation and padding off."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        raise UserError(f"no {FILE_NAME} in {directory}; give the folder written with the model")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise UserError(f"{path} is damaged or not a tokenizer ({str(e)[:120]}); copy it again") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode_batch(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, whole (no truncation, no padding, no special tokens); "" gives []."""
    if tok.truncation is not None or tok.padding is not None:  # a caller's tokenizer is not changed in place
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    # encode_batch_fast skips computing offsets, which ids alone do not need
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode([_as_str(t) for t in texts], add_special_tokens=False)]
