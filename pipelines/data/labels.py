"""Label sets: single-label class names, or multi-label sets written 'a|b|c'; and a stratified validation split.

A data set is multi-label as soon as one of its labels holds a '|': one row with two labels is enough to
know that rows may have several, and a single-label name never needs the character.
"""
from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

from pipelines.errors import UserError

SEPARATOR = "|"


def normalize_label(label: str) -> str:
    """Spaces stripped, Unicode in its composed form (NFC: 'café' typed or pasted is one label); a multi-label
    ' b | a|b' becomes 'b|a' (first-seen order, no empties or repeats)."""
    label = unicodedata.normalize("NFC", label)
    if SEPARATOR not in label:
        return label.strip()
    parts = (part.strip() for part in label.split(SEPARATOR))
    return SEPARATOR.join(dict.fromkeys(part for part in parts if part))


def is_multi_label(labels: list[str]) -> bool:
    return any(SEPARATOR in y for y in labels)


@dataclass
class LabelSet:
    """The class names in logit order (sorted, so that the same data always gives the same order)."""

    names: list[str]
    multi_label: bool = False

    def __post_init__(self):
        if len(set(self.names)) != len(self.names) or not all(self.names):
            raise ValueError(f"label names must be distinct and non-empty: {self.names}")
        if any(SEPARATOR in name for name in self.names):
            raise ValueError(f"a label name cannot hold {SEPARATOR!r}, which joins multi-label sets")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_labels(cls, labels: list[str], multi: bool | None = None) -> "LabelSet":
        """The label set of `labels`; `multi` None: multi-label when some label holds the separator."""
        multi = is_multi_label(labels) if multi is None else multi
        names = {name for y in labels for name in (y.split(SEPARATOR) if multi else [y])}
        return cls(sorted(name.strip() for name in names if name.strip()), multi)

    def to_json(self) -> str:
        """The names as a JSON list (labels.json); whether they are multi-label is stored with the model."""
        return json.dumps(self.names, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, multi_label: bool = False) -> "LabelSet":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError("a label file must hold a JSON list of label names, such as [\"neg\", \"pos\"]")
        return cls(names, multi_label)

    def split(self, label: str) -> list[str]:
        """The names in one label string."""
        return [x for x in normalize_label(label).split(SEPARATOR) if x] if self.multi_label else [label]

    def encode(self, labels: list[str]) -> list[int] | list[list[float]]:
        """Class indices (single-label) or multi-hot rows of 0.0 / 1.0 (multi-label)."""
        index = {name: i for i, name in enumerate(self.names)}
        unknown = sorted({x for y in labels for x in self.split(y)} - set(index))
        if unknown:
            raise UserError(f"unknown label(s) {', '.join(map(repr, unknown[:10]))}; this label set has "
                            f"{', '.join(map(repr, self.names[:20]))}")
        if not self.multi_label:
            return [index[y] for y in labels]
        rows = [[0.0] * len(self.names) for _ in labels]
        for row, y in zip(rows, labels):
            for name in self.split(y):
                row[index[name]] = 1.0
        return rows

    def decode(self, encoded: list[int] | list[list[float]]) -> list[str]:
        """Label strings back from `encode`'s output; a multi-hot row keeps the names whose value is >= 0.5."""
        if not self.multi_label:
            return [self.names[i] for i in encoded]
        return [SEPARATOR.join(n for n, v in zip(self.names, row) if v >= 0.5) for row in encoded]

    def counts(self, labels: list[str]) -> dict[str, int]:
        """Rows per name (a multi-label row counts once for each of its names)."""
        c = Counter(x for y in labels for x in self.split(y))
        return {name: c[name] for name in self.names}


def stratified_split(labels: list[str], *, valid_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, valid indices), each sorted, with about `valid_fraction` of every class in valid.

    A class keeps at least one example in train (a class with a single example stays there entirely).
    Multi-label rows are stratified on their first label. If every class is too small to give one, the
    largest class still gives one example to valid, so that valid is never empty when it can be filled.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be between 0 and 1, not {valid_fraction}")
    by_class = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[normalize_label(y).split(SEPARATOR)[0]].append(i)
    rng = random.Random(seed)
    train, valid = [], []
    for name in sorted(by_class):
        rows = by_class[name]
        rng.shuffle(rows)
        n_valid = min(int(len(rows) * valid_fraction + 0.5), len(rows) - 1)
        valid += rows[:n_valid]
        train += rows[n_valid:]
    if not valid:
        largest = max(sorted(by_class), key=lambda name: len(by_class[name]))
        if len(by_class[largest]) > 1:
            valid.append(by_class[largest][0])
            train.remove(by_class[largest][0])
    return sorted(train), sorted(valid)
