"""Label sets: single-label names, or multi-label sets written 'a|b|c'; and a stratified validation split."""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass


@dataclass
class LabelSet:
    names: list[str]
    multi_label: bool = False

    @classmethod
    def from_labels(cls, labels: list[str]) -> "LabelSet":
        multi = any("|" in y for y in labels)
        names = sorted({x for y in labels for x in (y.split("|") if multi else [y]) if x})
        return cls(names, multi)

    def split(self, label: str) -> list[str]:
        return [x for x in label.split("|") if x] if self.multi_label else [label]

    def encode(self, labels: list[str]):
        """Class indices (single-label) or multi-hot rows (multi-label)."""
        index = {n: i for i, n in enumerate(self.names)}
        if not self.multi_label:
            return [index[y] for y in labels]
        rows = [[0.0] * len(self.names) for _ in labels]
        for row, y in zip(rows, labels):
            for x in self.split(y):
                row[index[x]] = 1.0
        return rows

    def counts(self, labels: list[str]) -> dict[str, int]:
        c = Counter(x for y in labels for x in self.split(y))
        return {n: c[n] for n in self.names}


def stratified_split(labels: list[str], *, valid_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, valid indices), about `valid_fraction` of each class in valid; a class with a single
    example stays in train. Multi-label rows are stratified on their first label."""
    by_class = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y.split("|")[0]].append(i)
    rng = random.Random(seed)
    train, valid = [], []
    for name in sorted(by_class):
        rows = by_class[name]
        rng.shuffle(rows)
        n_valid = int(round(len(rows) * valid_fraction)) if len(rows) > 1 else 0
        n_valid = max(n_valid, 1) if len(rows) >= 5 else n_valid
        valid += rows[:n_valid]
        train += rows[n_valid:]
    return sorted(train), sorted(valid)
