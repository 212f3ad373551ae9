"""The reference's word-level tokenizer (HF `TransfoXLTokenizer`, transformers 4.37.2), without pickle.

Text becomes tokens in the reference's order (NOTES.md §12): lowercase all but special tokens, split
around added tokens (so `<eos>`, `<unk>`, `<formula>` are never split), then per piece: strip, lowercase,
and either characters (`delimiter == ""`) or the Moses pipeline (punctuation normalizer, tokenizer with
aggressive dash splits, `tokenize_numbers`). Decoding is Moses detokenization plus `detokenize_numbers`
and HF's clean-up of spaces. All of it must match the reference token for token, so it is written out
here rather than taken from a library. Vocabularies come from `vocab.txt`, an HF `vocab.pkl` or the
historic torch.save'd one (read by `safe_pickle`); `save_pretrained` writes `vocab.txt` and JSON only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .safe_pickle import safe_load

# Verbatim from the reference (TK `MATCH_NUMBERS`, `DETOKENIZE_NUMBERS`): 5,000 <-> 5 @,@ 000.
MATCH_NUMBERS = r"(?<=\d)[,.](?=\d)", r" @\g<0>@ "
DETOKENIZE_NUMBERS = [(r" @\,@ ", r","), (r" @\.@ ", r".")]
# HF PreTrainedTokenizerBase.clean_up_tokenization, applied by decode when clean_up_tokenization_spaces
CLEAN_UP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
CONFIG_KEYS = ("lower_case", "delimiter", "language", "eos_token", "unk_token", "additional_special_tokens",
               "never_split", "clean_up_tokenization_spaces")


def tokenize_numbers(tokens: list[str]) -> list[str]:
    """Split numbers at their separators: ['5,000', '1.73'] -> ['5', '@,@', '000', '1', '@.@', '73']."""
    return [piece for token in tokens for piece in re.sub(*MATCH_NUMBERS, token).split()]


def detokenize_numbers(text: str) -> str:
    for pattern, replacement in DETOKENIZE_NUMBERS:
        text = re.sub(pattern, replacement, text)
    return text


def _sacremoses():
    try:
        import sacremoses
    except ImportError:
        raise ImportError("WordTokenizer needs sacremoses for its Moses pipeline: pip install sacremoses") from None
    return sacremoses


def _alternation(tokens: list[str]) -> re.Pattern | None:
    return re.compile("(" + "|".join(map(re.escape, tokens)) + ")") if tokens else None


@dataclass
class WordTokenizer:
    """A word vocabulary (`idx2sym`, `sym2idx`) plus the reference's options; see `from_pretrained`."""

    idx2sym: list[str]
    sym2idx: dict[str, int] | None = None  # defaults to positions in idx2sym, first occurrence winning
    unk_idx: int | None = None
    added_tokens: dict[str, int] = field(default_factory=dict)  # HF added tokens: content -> id
    lower_case: bool = False
    delimiter: str | None = None  # only "" (characters) means anything; the reference ignores others
    language: str = "en"
    eos_token: str | None = "<eos>"
    unk_token: str | None = "<unk>"
    additional_special_tokens: list[str] = field(default_factory=lambda: ["<formula>"])
    never_split: list[str] | None = None  # Moses protected patterns; default: the special tokens
    clean_up_tokenization_spaces: bool = True

    def __post_init__(self):
        if not all(isinstance(s, str) for s in self.idx2sym):
            raise ValueError("idx2sym must be a list of strings")
        if self.sym2idx is None:  # reversed, so that the first of repeated symbols keeps its id
            self.sym2idx = {sym: i for i, sym in reversed(list(enumerate(self.idx2sym)))}
        self.added_tokens = dict(self.added_tokens)
        self._add_special_tokens()
        self.never_split = list(self.special_tokens if self.never_split is None else self.never_split)

    def _add_special_tokens(self) -> None:
        """Specials become added tokens, as HF's `_add_tokens`: their vocab id, else one past the vocab."""
        next_id = len(self.sym2idx.keys() | self.added_tokens.keys())
        for token in self.special_tokens:
            if token in self.added_tokens:
                continue
            if token in self.sym2idx:
                self.added_tokens[token] = self.sym2idx[token]
            else:
                self.added_tokens[token] = next_id
                next_id += 1

    @property
    def special_tokens(self) -> list[str]:
        """HF `all_special_tokens`: eos, unk, then the additional ones, without repeats."""
        tokens = [self.eos_token, self.unk_token, *(self.additional_special_tokens or [])]
        return list(dict.fromkeys(t for t in tokens if t))

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary (embedding rows); added tokens may have ids at or beyond it."""
        return len(self.idx2sym)

    def __len__(self) -> int:
        return len(self.sym2idx.keys() | self.added_tokens.keys())

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def unk_id(self) -> int | None:
        """The id out-of-vocabulary words get: `unk_idx`, else `<unk>`, else `<UNK>` (TK:`_convert_token_to_id`)."""
        if self.unk_idx is not None:
            return self.unk_idx
        return self.sym2idx.get("<unk>", self.sym2idx.get("<UNK>"))

    def token_to_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        if token in self.sym2idx:
            return self.sym2idx[token]
        if self.unk_id is None:
            raise ValueError(f"{token!r} is not in the vocabulary, which has no <unk> token to replace it")
        return self.unk_id

    def id_to_token(self, index: int) -> str:
        if index in self._added_by_id:
            return self._added_by_id[index]
        if not 0 <= index < len(self.idx2sym):
            raise ValueError(f"token id {index} is outside the vocabulary (0..{len(self.idx2sym) - 1})")
        return self.idx2sym[index]

    @cached_property
    def _added_by_id(self) -> dict[int, str]:
        return {i: token for token, i in self.added_tokens.items()}

    @cached_property
    def _moses(self):
        sm = _sacremoses()
        return (sm.MosesPunctNormalizer(self.language), sm.MosesTokenizer(self.language),
                sm.MosesDetokenizer(self.language))

    @cached_property
    def _specials_pattern(self) -> re.Pattern | None:
        return _alternation(self.special_tokens)  # in HF's order: the first alternative wins at a position

    @cached_property
    def _added_pattern(self) -> re.Pattern | None:
        return _alternation(sorted(self.added_tokens, key=len, reverse=True))  # HF's Trie: longest match

    def tokenize(self, text: str, *, add_eos: bool = False, add_double_eos: bool = False) -> list[str]:
        """Tokens of `text`; `add_eos` appends '<eos>', `add_double_eos` wraps in '<S>' (the reference's
        `_tokenize` options, which its public `tokenize` silently drops)."""
        if self.lower_case:
            text = self._lower_outside_specials(text)
        pieces = self._added_pattern.split(text) if self._added_pattern else [text]
        tokens = []
        for i, piece in enumerate(pieces):  # odd positions are the added tokens the pattern captured
            tokens.extend([piece] if i % 2 else self._tokenize_piece(piece))
        if add_double_eos:
            return ["<S>", *tokens, "<S>"]
        return tokens + ["<eos>"] if add_eos else tokens

    def _lower_outside_specials(self, text: str) -> str:
        # Character by character, as HF's `(specials)|(.+?)` substitution: "ΟΔΟΣ".lower() would end in ς.
        pieces = self._specials_pattern.split(text) if self._specials_pattern else [text]
        return "".join(p if i % 2 else "".join(c.lower() for c in p) for i, p in enumerate(pieces))

    def _tokenize_piece(self, line: str) -> list[str]:
        """The reference's `_tokenize` on text holding no added token (TK:506)."""
        line = line.strip()
        if self.lower_case:
            line = line.lower()
        if self.delimiter == "":
            return list(line)
        normalizer, moses, _ = self._moses
        tokens = moses.tokenize(normalizer.normalize(line), aggressive_dash_splits=True, return_str=False,
                                escape=False, protected_patterns=self.never_split)
        return tokenize_numbers(tokens)

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        return [self.token_to_id(token) for token in self.tokenize(text, add_eos=add_eos)]

    def decode(self, ids) -> str:
        """HF `decode(ids)`: added tokens that are not specials, or lie past the vocab, stand alone."""
        specials = set(self.special_tokens)
        alone = {t for t, i in self.added_tokens.items()
                 if t not in specials or (t in self.additional_special_tokens and i >= self.vocab_size)}
        texts, run = [], []
        for token in (self.id_to_token(int(i)) for i in ids):
            if token not in alone:
                run.append(token)
                continue
            if run and (flushed := self._detokenize(run)):
                texts.append(flushed)
            texts.append(token)
            run = []
        if run:
            texts.append(self._detokenize(run))
        text = " ".join(texts)
        if self.clean_up_tokenization_spaces:
            for before, after in CLEAN_UP:
                text = text.replace(before, after)
        return text

    def _detokenize(self, tokens: list[str]) -> str:
        return detokenize_numbers(self._moses[2].detokenize(tokens)).strip()

    @classmethod
    def from_pretrained(cls, path: str | Path) -> WordTokenizer:
        """From a directory (or one file in it) with `vocab.txt` or `vocab.pkl` and optionally
        `tokenizer_config.json` / `special_tokens_map.json`. Options come from the JSON files, never
        from the pickle, and `vocab.txt` wins over `vocab.pkl`, both as in the reference."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        if path.is_dir():
            path = next((p for p in (path / "vocab.txt", path / "vocab.pkl") if p.is_file()), path / "vocab.pkl")
        if not path.is_file():
            raise ValueError(f"{path} not found: a tokenizer needs a vocab.txt or vocab.pkl")
        vocab = _read_vocab_txt(path) if path.suffix == ".txt" else _read_vocab_pickle(path)
        config = _read_config(directory)
        vocab["added_tokens"] = {**vocab.get("added_tokens", {}), **config.pop("added_tokens", {})}
        return cls(**vocab, **config)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `vocab.txt` (one symbol a line) and `tokenizer_config.json`; never a pickle."""
        bad = [s for s in self.idx2sym if not s or s.split() != [s]]
        if bad or len(set(self.idx2sym)) != len(self.idx2sym):
            raise ValueError(f"vocab.txt cannot hold empty, repeated or space-containing symbols: {bad[:3]}")
        if self.unk_id != _unk_from_txt(self.sym2idx, "the vocabulary"):
            raise ValueError("vocab.txt would map unknown words to another id: it needs <unk> or <UNK>")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("".join(s + "\n" for s in self.idx2sym), encoding="utf-8")
        config = {key: getattr(self, key) for key in CONFIG_KEYS}
        config["added_tokens_decoder"] = {str(i): {"content": t, "special": t in self.special_tokens}
                                          for t, i in self.added_tokens.items()}
        config["tokenizer_class"] = "TransfoXLTokenizer"
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _unk_from_txt(sym2idx: dict[str, int], where: object) -> int:
    for unk in ("<UNK>", "<unk>"):  # the reference's `_build_from_file` prefers <UNK>
        if unk in sym2idx:
            return sym2idx[unk]
    raise ValueError(f"{where} has neither <unk> nor <UNK>, which the reference requires")


def _read_vocab_txt(path: Path) -> dict:
    """One symbol a line, its first whitespace-separated field; repeats are skipped (TK:`add_symbol`)."""
    idx2sym, sym2idx = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.split():
            raise ValueError(f"{path}:{number} is blank; every line must hold a symbol")
        sym = line.split()[0]
        if sym not in sym2idx:
            sym2idx[sym] = len(idx2sym)
            idx2sym.append(sym)
    return {"idx2sym": idx2sym, "sym2idx": sym2idx, "unk_idx": _unk_from_txt(sym2idx, path)}


def _read_vocab_pickle(path: Path) -> dict:
    """`idx2sym`, `sym2idx`, `unk_idx` and added tokens of an HF or historic pickle; the rest is ignored."""
    state = safe_load(path)
    idx2sym, sym2idx = (state.get(k) if isinstance(state, dict) else None for k in ("idx2sym", "sym2idx"))
    if not isinstance(idx2sym, list) or not isinstance(sym2idx, dict):
        raise ValueError(f"{path} is not a transfo-xl vocabulary: it lacks idx2sym and sym2idx")
    if not all(isinstance(s, str) and type(i) is int for s, i in sym2idx.items()):
        raise ValueError(f"{path} is damaged: sym2idx must map strings to ints")
    unk_idx = state.get("unk_idx")
    added = state.get("_added_tokens_encoder") or {}
    return {"idx2sym": list(idx2sym), "sym2idx": dict(sym2idx),
            "unk_idx": unk_idx if type(unk_idx) is int else None,
            "added_tokens": {t: i for t, i in added.items() if isinstance(t, str) and type(i) is int}}


def _content(value):
    """Tokens as HF saves them: strings or AddedToken dicts, alone or in lists; other values unchanged."""
    if isinstance(value, list):
        return [_content(v) for v in value]
    return value.get("content") if isinstance(value, dict) else value


def _read_config(directory: Path) -> dict:
    """Options from tokenizer_config.json, overridden by special_tokens_map.json as HF does."""
    config = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            try:
                config |= json.loads((directory / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{directory / name} is not valid JSON ({e})") from None
    options = {key: _content(config[key]) for key in CONFIG_KEYS if key in config}
    decoder = config.get("added_tokens_decoder") or {}
    options["added_tokens"] = {_content(t): int(i) for i, t in decoder.items()}
    return options
