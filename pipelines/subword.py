"""The classifier's subword tokenizer: byte-level BPE (Hugging Face `tokenizers`) trained on the training texts.

Byte-level BPE never meets an unknown character (any text, any script, any bytes), keeps character offsets
for the explanation view, and trains in seconds on tens of MB. Ids: 0 `<pad>`, 1 `<unk>`, 2 `<eos>`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL = ["<pad>", "<unk>", "<eos>"]
MAX_TRAIN_CHARS = 50_000_000


def _sample(texts: Iterable[str], limit: int) -> Iterator[str]:
    used = 0
    for t in texts:
        if used >= limit:
            return
        used += len(t)
        yield t


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 16000, min_frequency: int = 2) -> Tokenizer:
    """Train on (at most ~50 M characters of) `texts`."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_sample(texts, MAX_TRAIN_CHARS), trainer=trainer)
    return tok
