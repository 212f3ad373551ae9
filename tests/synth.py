"""A small synthetic labelled corpus made inside the tests: three topics with their own words, documents
of very different lengths (some many segments long), a shared filler vocabulary, seeded."""
from __future__ import annotations

import random

import pandas as pd

TOPICS = {
    "sport": "match goal team player coach season league score win cup".split(),
    "tech": "software chip computer network data code cloud device phone robot".split(),
    "politics": "minister vote election party government law policy parliament tax debate".split(),
}
FILLER = "the a of and to in is was for on that with as by it this at from".split()


def make_corpus(n: int, *, seed: int = 0, multi_label: bool = False, long_every: int = 7) -> pd.DataFrame:
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        labels = [label] + ([names[(i + 1) % 3]] if multi_label and i % 4 == 0 else [])
        n_words = rng.randint(150, 400) if i % long_every == 0 else rng.randint(8, 60)
        words = [rng.choice(TOPICS[rng.choice(labels)]) if rng.random() < 0.3 else rng.choice(FILLER)
                 for _ in range(n_words)]
        rows.append({"id": i, "text": " ".join(words), "label": "|".join(sorted(labels))})
    return pd.DataFrame(rows)
