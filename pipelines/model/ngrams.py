"""The n-gram component a model directory can carry beside the encoder, and its fusion with it.

TF-IDF over word 1-2-grams (sublinear tf, min_df 2), `txl baseline`'s features, and over character 2-5-grams
within words (`--ngrams fuse`, the default; `--ngrams words` leaves them out), and one linear SVM over both,
fit on the same training split as the encoder, then (pipelines/commands/fuse.py) refit on the training and validation
splits once the fusion weights are fit. The two read a document differently (the encoder its words in
context, the n-grams every rare name and phrase) and err on different documents, so `txl train` fuses them:

    fused logits = a * log_softmax(encoder logits) + b * svm scores            (single-label)
    fused logits = a * encoder logits + b * svm scores + c                     (multi-label, per label)

with a, b (and c) fit on the validation split by log-loss, a 2-3 parameter stacking that cannot overfit a
validation split of a few hundred documents, under a weak prior that keeps each part at its own calibrated
weight where the split has too few errors to tell the parts apart (pipelines/model/fusion.py); a weight near 0
switches a component off where it does not help.
Multi-label decision thresholds are then tuned on the fused validation probabilities.

Stored without pickle: `ngram.json` (the terms in column order, words then characters, the settings, the
fusion weights and thresholds) and `ngram.safetensors` (idf, SVM weights in float16, intercepts).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from pipelines.errors import UserError
from pipelines.model.fusion import fused_logits

FILES = ("ngram.json", "ngram.safetensors")
SETTINGS = {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": 2, "lowercase": True}
# character 2-5-grams within words: spelling variants, names and word parts the word n-grams split apart
CHAR_SETTINGS = {"analyzer": "char_wb", "ngram_range": [2, 5], "sublinear_tf": True, "min_df": 2, "lowercase": True}
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # TfidfVectorizer's default: the words of the word n-grams
CHUNK_CHARS = 20_000  # a longer text is counted in pieces: memory bounded by this, not by the text
REACH = 8  # a word may run this many pieces' length past a piece's end before it is cut inside
_SPACE = re.compile(r"\s")
_LAST_WORD = re.compile(r"\s\S+\s*\Z")
FIT_ONLY = {"min_df"}  # a setting of the fit; a loaded vectorizer has its vocabulary
MAX_TERMS = 1_000_000  # the most frequent n-grams kept: bounds the component's size (imdb has 439k, 20newsgroups 386k)
MAX_CHAR_TERMS = 300_000  # the most frequent character n-grams kept (the weights are (labels, terms) float16)
# the training text the fit reads at most: its memory grows with it (sklearn counts every n-gram before pruning)
MAX_FIT_CHARS = 300_000_000
# with character n-grams: 4.9 GB above the texts for 64M characters of imdb (benchmarks/ngram_memory.py), about
# what the words alone take at their 300M
MAX_FIT_CHARS_WITH_CHARS = 64_000_000


def _settings(*, fit: bool, chars: bool = False) -> dict:
    """TfidfVectorizer's keyword arguments (JSON keeps tuples as lists)."""
    return {"dtype": np.float32, **{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in (CHAR_SETTINGS if chars else SETTINGS).items()
                                    if fit or k not in FIT_ONLY}}


class _Features:
    """The word vectorizer, and the character one after it when the model has one: one sparse row per text.

    A text longer than `CHUNK_CHARS` is counted piece by piece, so memory stays bounded whatever its length:
    sklearn lists every n-gram of a text before counting it (a 6 MB text made gigabytes of strings). Pieces
    end at whitespace and each starts with the previous piece's last word, whose own counts are subtracted
    again: both analyzers' n-grams never cross more than one word boundary (word 1-2-grams, character n-grams
    within words), so the summed counts equal the whole text's exactly (for words shorter than REACH pieces).
    """

    def __init__(self, parts: list):
        self.parts = parts

    def transform(self, texts: list[str]):
        import scipy.sparse as sp

        rows = [self._part(v, texts) for v in self.parts]
        return rows[0] if len(rows) == 1 else sp.hstack(rows, format="csr")

    @staticmethod
    def _part(vec, texts: list[str]):
        if all(len(t) <= CHUNK_CHARS for t in texts):
            return vec.transform(texts)
        import scipy.sparse as sp

        counts = sp.vstack([_counts(vec, t) for t in texts], format="csr")
        return vec._tfidf.transform(counts, copy=False)


def _counts(vec, text: str):
    """The raw n-gram counts of one text (1, F), read in pieces of about `CHUNK_CHARS` characters."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer

    count = CountVectorizer.transform.__get__(vec)  # the counts a TfidfVectorizer weighs
    if len(text) <= CHUNK_CHARS:
        return count([text])
    unit = _LAST_WORD if vec.analyzer == "char_wb" else re.compile(vec.token_pattern)
    total = sp.csr_matrix((1, len(vec.vocabulary_)), dtype=np.float64)  # sparse: as large as the text's n-grams,
    for piece, overlap in _pieces(text, unit):                          # not the vocabulary (8 MB a row dense)
        total = total + count([piece])
        if overlap:
            total = total - count([overlap])
    total.eliminate_zeros()
    return total.astype(np.float32)


def _pieces(text: str, unit: re.Pattern):
    """(piece, the part it shares with the previous piece or ""): pieces of about CHUNK_CHARS characters that
    end at whitespace, each starting where the previous one's last unit starts: its last word for character
    n-grams within words, its last token for word n-grams (a bigram joins tokens across words that hold none).
    A piece always reaches past the previous one's end, so the reading moves on whatever the words' lengths.
    A "word" longer than REACH pieces (encoded data, text without spaces) is cut inside, with no overlap: exact
    for shorter words, bounded beyond (one 5 MB word took 2.6 GB counted whole)."""
    start, shared, reached = 0, "", 0
    while True:
        if len(text) - start <= CHUNK_CHARS:
            yield text[start:], shared
            return
        at = max(start + CHUNK_CHARS, reached + 1)
        end = _word_end(text, at, at + REACH * CHUNK_CHARS)
        if end is None:  # no whitespace within REACH pieces' length: cut the word here
            yield text[start:at], shared
            start, shared, reached = at, "", at
            continue
        yield text[start:end], shared
        if end >= len(text):
            return
        unit_start = _last_start(unit, text, start, end)
        start, shared, reached = unit_start, text[unit_start:end], end


def _last_start(unit: re.Pattern, text: str, start: int, end: int) -> int:
    """Where the last unit of text[start:end] starts (`start` when it holds none)."""
    if unit is _LAST_WORD:
        match = unit.search(text, start, end)
        return start if match is None else match.start() + 1
    last = start
    for match in unit.finditer(text, start, end):
        last = match.start()
    return last


def _word_end(text: str, at: int, until: int) -> int | None:
    """The end of the word running at `at` (the next whitespace, or the text's end); None when it is not
    before `until`."""
    match = _SPACE.search(text, at, until)
    if match is not None:
        return match.start()
    return len(text) if until >= len(text) else None


@dataclass
class NgramModel:
    """Fitted TF-IDF vectorizers (words, then characters) and one linear scorer per class (per label when
    multi-label)."""

    terms: list[str]
    idf: np.ndarray  # (F,)
    coef: np.ndarray  # (L, F)
    intercept: np.ndarray  # (L,)
    multi_label: bool = False
    fusion: dict = field(default_factory=lambda: {"a": 1.0, "b": 0.0, "c": 0.0})
    thresholds: list[float] | None = None  # multi-label: on the fused probabilities
    fit_documents: int | None = None  # the training documents the fit read (fewer than all: `fit_sample`)
    n_words: int | None = None  # the first n_words terms are word n-grams, the rest character ones; None: all words

    def __post_init__(self):
        # rounded as the file stores them (the figures measured after fitting are those of the saved model) and
        # cast to float32 once, not for every batch
        self.coef = np.asarray(self.coef, dtype=np.float16).astype(np.float32)
        self._vectorizer = None

    @property
    def n_word_terms(self) -> int:
        return len(self.terms) if self.n_words is None else self.n_words

    @property
    def vectorizer(self) -> _Features:
        """sklearn TfidfVectorizers, words then characters (imported here: loading a model without n-grams does
        not pay for sklearn)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._vectorizer is None:  # rebuilt from plain data: the terms' order is the column order
            parts, n = [], self.n_word_terms
            for chars, cols in ((False, slice(0, n)), (True, slice(n, len(self.terms)))):
                if chars and n == len(self.terms):  # a words-only model
                    continue
                vec = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(self.terms[cols])},
                                      **_settings(fit=False, chars=chars))
                vec.idf_ = self.idf[cols]
                parts.append(vec)
            self._vectorizer = _Features(parts)
        return self._vectorizer

    def scores(self, texts: list[str]) -> np.ndarray:
        """SVM decision values (N, L); a binary single-label model gets (-s/2, s/2) for its two classes."""
        x = self.vectorizer.transform(texts)
        s = np.asarray(x @ self.coef.T) + self.intercept[None]  # (N, L)
        if not self.multi_label and self.coef.shape[0] == 1:
            s = np.concatenate([-s / 2, s / 2], axis=1)
        return s.astype(np.float32)

    def coverage(self, texts: list[str]) -> np.ndarray:
        """Per text, the share of its words (the word n-grams' tokens, lowercased) that are single-word terms of
        the model: low for a text in another language or on a subject the training texts never touched. NaN for
        a text without words. Read word by word: memory does not grow with the text."""
        if getattr(self, "_words", None) is None:
            self._words = frozenset(t for t in self.terms[:self.n_word_terms] if " " not in t)
        word = re.compile(TOKEN_PATTERN)
        out = np.full(len(texts), np.nan, dtype=np.float32)
        for i, text in enumerate(texts):
            known = total = 0
            for match in word.finditer(text if isinstance(text, str) else ""):
                total += 1
                known += match.group().lower() in self._words
            if total:
                out[i] = known / total
        return out

    def fuse(self, encoder_logits: torch.Tensor, scores: np.ndarray) -> torch.Tensor:
        """Fused logits (N, L) from the encoder's logits (N, L) and `scores` (N, L)."""
        w = self.fusion
        return fused_logits(encoder_logits.float(), torch.as_tensor(scores), a=w["a"], b=w["b"], c=w.get("c", 0.0),
                            multi_label=self.multi_label)

    def span_contributions(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """Each part's additive share of the SVM scores (P, L): a term's tf-idf x weight is split among the parts
        in proportion to its counts in them, so the shares add up to (scores - intercept) and a part's sign says
        whether its own n-grams push toward a class. Occluding a part instead would renormalise the whole
        document's tf-idf vector and credit a part with what the others lose (an article of the predicted class
        came out against it in a 20,000-word document). An n-gram that crosses two parts is shared by neither."""
        import scipy.sparse as sp

        x = self.vectorizer.transform([text]).tocsr()  # (1, F) the document's normalised tf-idf
        counts = sp.vstack([sp.hstack([_counts(vec, text[a:b]) for vec in self.vectorizer.parts], format="csr")
                            for a, b in spans], format="csr").astype(np.float64)  # (P, F)
        totals = np.asarray(counts.sum(0)).ravel()
        shares = counts.multiply(1.0 / np.maximum(totals, 1e-12)).multiply(x.toarray()).tocsr()  # (P, F)
        out = np.asarray(shares @ self.coef.T, dtype=np.float64)  # (P, L or 1)
        if not self.multi_label and self.coef.shape[0] == 1:
            out = np.concatenate([-out / 2, out / 2], axis=1)
        return out.astype(np.float32)

    def term_contributions(self, text: str, label: int, top: int = 10) -> list[tuple[str, float]]:
        """The n-grams of `text` that raise the fused logit of class `label` most, with their part of it."""
        ranked = sorted(self.contributions(text, label).items(), key=lambda kv: -kv[1])[:top]
        return [(term, value) for term, value in ranked if value > 0]

    def contributions(self, text: str, label: int) -> dict[str, float]:
        """Each word n-gram's part of the fused logit of class `label` (b x tf-idf x weight); a character
        n-gram's part is shared among the words of `text` that hold it, so the parts are readable words and
        still add up to b x (score - intercept)."""
        x = self.vectorizer.transform([text]).tocsr()
        binary = not self.multi_label and self.coef.shape[0] == 1
        row, sign = (0, 0.5 if label == 1 else -0.5) if binary else (label, 1.0)
        values = x.data * self.coef[row, x.indices] * (sign * self.fusion["b"])
        out: dict[str, float] = {}
        owners = self._char_owners(text) if x.indices.size and x.indices.max() >= self.n_word_terms else {}
        for j, v in zip(x.indices.tolist(), values.tolist()):
            if j < self.n_word_terms:
                out[self.terms[j]] = out.get(self.terms[j], 0.0) + v
                continue
            holders = owners[self.terms[j]]
            total = sum(holders.values())
            for word, count in holders.items():
                out[word] = out.get(word, 0.0) + v * count / total
        return out

    def _char_owners(self, text: str) -> dict[str, dict[str, int]]:
        """Each character n-gram of `text` -> the words holding it, counted, as sklearn's char_wb analyzer
        cuts them (each whitespace-separated word padded with a space either side); words keyed without the
        punctuation at their ends."""
        from string import punctuation

        low, high = CHAR_SETTINGS["ngram_range"]
        owners: dict[str, dict[str, int]] = {}
        for word in self.vectorizer.parts[1].build_preprocessor()(text).split():
            padded, name = f" {word} ", word.strip(punctuation) or word
            for n in range(low, min(high, len(padded)) + 1):
                for i in range(len(padded) - n + 1):
                    held = owners.setdefault(padded[i:i + n], {})
                    held[name] = held.get(name, 0) + 1
        return owners

    # ---- files ----------------------------------------------------------------------------------------------
    def files(self) -> dict[str, str | bytes]:
        meta = {"format": "txl-ngram", "settings": SETTINGS, "multi_label": self.multi_label,
                "fusion": self.fusion, "thresholds": self.thresholds, "fit_documents": self.fit_documents,
                **({"char_settings": CHAR_SETTINGS, "n_words": self.n_words} if self.n_words is not None else {}),
                "terms": self.terms}
        arrays = {"idf": self.idf.astype(np.float32), "coef": self.coef.astype(np.float16),
                  "intercept": self.intercept.astype(np.float32)}
        return {"ngram.json": json.dumps(meta, ensure_ascii=False) + "\n", "ngram.safetensors": save_arrays(arrays)}

    @classmethod
    def load(cls, directory: Path) -> "NgramModel | None":
        """The component in `directory`, None when it has none; a damaged one is a one-line UserError."""
        if not (directory / "ngram.json").is_file():
            return None
        try:
            meta = json.loads((directory / "ngram.json").read_text(encoding="utf-8"))
            arrays = load_arrays((directory / "ngram.safetensors").read_bytes())
            model = cls(list(meta["terms"]), arrays["idf"], arrays["coef"], arrays["intercept"],
                        bool(meta["multi_label"]), dict(meta["fusion"]), meta.get("thresholds"),
                        meta.get("fit_documents"), meta.get("n_words"))
        except Exception as e:  # json, safetensors and missing keys raise many types for a damaged file
            raise UserError(f"{directory}: the n-gram component (ngram.json, ngram.safetensors) is damaged "
                            f"({type(e).__name__}); copy the model directory again") from None
        if not (len(model.terms) == model.idf.shape[0] == model.coef.shape[1]) or not np.isfinite(model.coef).all() \
                or not 0 < model.n_word_terms <= len(model.terms):
            raise UserError(f"{directory}: ngram.json and ngram.safetensors do not fit together; copy the model again")
        return model


def fit_ngram(texts: list[str], targets: np.ndarray, *, multi_label: bool, n_labels: int, C: float = 1.0,
              chars: bool = True, limit: int | None = None) -> NgramModel | None:
    """Fit on training texts; `targets` are class indices (N,) or multi-hot rows (N, L); `chars`: character
    n-grams beside the word ones; `limit`: the most characters read (a random sample of documents beyond it;
    at most `fit_limit`). None when the texts hold no word of two or more letters (nothing for the word n-grams
    to count)."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    keep = fit_sample([len(t) for t in texts], targets, min(fit_limit(chars), limit or fit_limit(chars)))
    if keep is not None:
        texts, targets = [texts[i] for i in keep], targets[keep]
    words = _fit_vectorizer(texts, chars=False)
    if words is None:
        return None
    parts = [words] + ([v for v in [_fit_vectorizer(texts, chars=True)] if v is not None] if chars else [])
    x = sp.hstack([m for _, m in parts], format="csr") if len(parts) > 1 else parts[0][1]
    terms = [t for vec, _ in parts for t, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
    idf = np.concatenate([vec.idf_ for vec, _ in parts]).astype(np.float32)
    if multi_label:
        coef, intercept = _per_label(x, targets, C)
    else:
        svm = LinearSVC(C=C, random_state=0).fit(x, targets)
        coef, intercept = _full_classes(svm, n_labels, x.shape[1])
    return NgramModel(terms, idf, coef, intercept, multi_label, fit_documents=len(texts),
                      n_words=len(words[0].vocabulary_) if chars else None)


def fit_limit(chars: bool) -> int:
    """The most training text (characters) the fit reads."""
    return min(MAX_FIT_CHARS, MAX_FIT_CHARS_WITH_CHARS) if chars else MAX_FIT_CHARS


def _fit_vectorizer(texts: list[str], *, chars: bool):
    """(fitted TfidfVectorizer, its matrix), min_df relaxed to 1 when no term reaches it; None when there is no
    term at all."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(max_features=MAX_CHAR_TERMS if chars else MAX_TERMS, **_settings(fit=True, chars=chars))
    for min_df in (vec.min_df, 1):
        try:
            return vec.set_params(min_df=min_df), vec.fit_transform(texts)
        except ValueError:  # every term rarer than min_df, then none at all
            continue
    return None


def fit_sample(lengths: list[int], targets: np.ndarray, limit: int | None = None, seed: int = 0,
               per_label: int = 200) -> np.ndarray | None:
    """The training texts the fit reads: None for all of them when their `lengths` add up to at most `limit`
    characters (MAX_FIT_CHARS), else the sorted indices of a seeded random sample of about that many, which
    first takes up to `per_label` documents of every label (`targets`: class indices (N,) or multi-hot (N, L)),
    so a rare class keeps its n-grams (a class missing from the fit would score lowest for every document)."""
    limit = MAX_FIT_CHARS if limit is None else limit
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.sum() <= limit:
        return None
    order = np.random.default_rng(seed).permutation(len(lengths))
    hot = targets[order].astype(bool) if targets.ndim == 2 else \
        np.eye(int(targets.max()) + 1, dtype=bool)[targets[order]]  # (N, L) in the sample's order
    first = ((np.cumsum(hot, axis=0) <= per_label) & hot).any(axis=1)  # among its label's first `per_label`
    order = np.concatenate([order[first], order[~first]])
    n = max(1, int(np.searchsorted(np.cumsum(lengths[order]), limit, side="right")))
    return np.sort(order[:n])


def _full_classes(svm, n_labels: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """One row per class in logit order, even when the training split lacks some classes (they score -inf-ish)."""
    if n_labels == 2 and len(svm.classes_) == 2:
        return svm.coef_.astype(np.float32), svm.intercept_.astype(np.float32)
    coef = np.zeros((n_labels, n_features), np.float32)
    intercept = np.full(n_labels, -10.0, np.float32)
    if len(svm.classes_) == 2:  # a binary fit among more labels: one row, the positive class's
        coef[svm.classes_[1]], intercept[svm.classes_[1]] = svm.coef_[0], svm.intercept_[0]
        coef[svm.classes_[0]], intercept[svm.classes_[0]] = -svm.coef_[0], -svm.intercept_[0]
        return coef, intercept
    coef[svm.classes_], intercept[svm.classes_] = svm.coef_, svm.intercept_
    return coef, intercept


def _per_label(x, targets: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.svm import LinearSVC

    coef = np.zeros((targets.shape[1], x.shape[1]), np.float32)
    intercept = np.full(targets.shape[1], -10.0, np.float32)  # a label never seen in training stays off
    for j in range(targets.shape[1]):
        if 0 < targets[:, j].sum() < len(targets):
            svm = LinearSVC(C=C, random_state=0).fit(x, targets[:, j])
            coef[j], intercept[j] = svm.coef_[0], svm.intercept_[0]
    return coef, intercept
